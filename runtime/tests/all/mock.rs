//! An in-memory backend: host vectors stand in for device memory and launches are only
//! recorded, so the checks of `Device` can be tested on any machine.

use std::sync::{Arc, Mutex};

use linrec_runtime::{
    Backend, BackendKind, DeviceId, DeviceInfo, FillPattern, KernelHandle, LaunchArg, LaunchConfig,
    ModuleHandle, RawBuffer, Result, RuntimeError,
};

#[derive(Debug)]
pub struct MockBackend {
    id: DeviceId,
    info: DeviceInfo,
    /// One line per launch that reached the backend: `name(arg kinds)`.
    pub launches: Arc<Mutex<Vec<String>>>,
}

struct MockMem(Mutex<Vec<u8>>);

impl MockBackend {
    pub fn new() -> (Self, Arc<Mutex<Vec<String>>>) {
        let launches = Arc::new(Mutex::new(Vec::new()));
        let backend = MockBackend {
            id: DeviceId::fresh(),
            info: DeviceInfo {
                backend: BackendKind::OpenCl,
                ordinal: 0,
                name: "mock".into(),
                vendor: "tests".into(),
                driver_version: "0".into(),
                total_memory: 1 << 30,
                max_threads_per_block: 1024,
                max_shared_memory_per_block: 48 * 1024,
                compute_capability: None,
                arch: None,
                il_version: None,
                is_cpu: true,
            },
            launches: launches.clone(),
        };
        (backend, launches)
    }

    fn mem<'a>(&self, raw: &'a RawBuffer) -> Result<&'a MockMem> {
        raw.downcast::<MockMem>()
            .ok_or_else(|| RuntimeError::WrongDevice {
                what: "buffer".into(),
                expected: "mock".into(),
                found: "other".into(),
            })
    }
}

impl Backend for MockBackend {
    fn kind(&self) -> BackendKind {
        self.info.backend
    }

    fn device_id(&self) -> DeviceId {
        self.id
    }

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn devices(&self) -> Result<Vec<DeviceInfo>> {
        Ok(vec![self.info.clone()])
    }

    fn allocate(&self, bytes: usize) -> Result<RawBuffer> {
        Ok(RawBuffer::new(
            self.id,
            bytes,
            Box::new(MockMem(Mutex::new(vec![0; bytes]))),
        ))
    }

    fn upload(&self, dst: &RawBuffer, data: &[u8]) -> Result<()> {
        let mut m = self.mem(dst)?.0.lock().expect("mock lock");
        m[..data.len()].copy_from_slice(data);
        Ok(())
    }

    fn download(&self, src: &RawBuffer, out: &mut [u8]) -> Result<()> {
        let m = self.mem(src)?.0.lock().expect("mock lock");
        out.copy_from_slice(&m[..out.len()]);
        Ok(())
    }

    fn fill(&self, dst: &RawBuffer, pattern: FillPattern) -> Result<()> {
        let mut m = self.mem(dst)?.0.lock().expect("mock lock");
        let bytes: Vec<u8> = match pattern {
            FillPattern::U8(v) => vec![v],
            FillPattern::U16(v) => v.to_le_bytes().to_vec(),
            FillPattern::U32(v) => v.to_le_bytes().to_vec(),
        };
        for (i, b) in m.iter_mut().enumerate() {
            *b = bytes[i % bytes.len()];
        }
        Ok(())
    }

    fn load_module(&self, image: &[u8]) -> Result<ModuleHandle> {
        Ok(ModuleHandle::new(self.id, Arc::new(image.to_vec())))
    }

    fn kernel(&self, _module: &ModuleHandle, name: &str) -> Result<KernelHandle> {
        Ok(KernelHandle::new(self.id, name, Arc::new(())))
    }

    fn launch(
        &self,
        kernel: &KernelHandle,
        _config: &LaunchConfig,
        args: &[LaunchArg<'_>],
    ) -> Result<()> {
        let kinds: Vec<&str> = args.iter().map(LaunchArg::kind_name).collect();
        self.launches.lock().expect("mock lock").push(format!(
            "{}({})",
            kernel.name(),
            kinds.join(", ")
        ));
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}
