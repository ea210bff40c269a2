//! An in-memory backend: host vectors stand in for device memory and launches are only
//! recorded, so the checks of `Device` can be tested on any machine.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use linrec_runtime::{
    Backend, BackendKind, DeviceId, DeviceInfo, FillPattern, KernelHandle, LaunchArg, LaunchConfig,
    ModuleHandle, RawBuffer, Result, RuntimeError, TensorMapSpec,
};

#[derive(Debug)]
pub struct MockBackend {
    id: DeviceId,
    info: DeviceInfo,
    /// One line per launch that reached the backend: `name(arg kinds)`.
    pub launches: Arc<Mutex<Vec<String>>>,
    /// Every TMA map encoded: (address, geometry).
    pub maps: Arc<Mutex<Vec<(u64, TensorMapSpec)>>>,
    /// Whether buffers have device addresses (and so TMA maps); true by default.
    pub tma: Arc<AtomicBool>,
    /// Added to the (256-byte aligned) address of each later allocation: 2 makes them
    /// misaligned for TMA.
    pub misalign: Arc<AtomicU64>,
    next_address: AtomicU64,
}

/// A buffer: its bytes and its made-up device address.
struct MockMem(Mutex<Vec<u8>>, u64);

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
            maps: Arc::default(),
            tma: Arc::new(AtomicBool::new(true)),
            misalign: Arc::default(),
            next_address: AtomicU64::new(1 << 20),
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
        let at = self
            .next_address
            .fetch_add((bytes as u64 + 1).next_multiple_of(256), Ordering::Relaxed);
        let at = at + self.misalign.load(Ordering::Relaxed);
        Ok(RawBuffer::new(
            self.id,
            bytes,
            Box::new(MockMem(Mutex::new(vec![0; bytes]), at)),
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

    fn device_address(&self, raw: &RawBuffer) -> Option<u64> {
        let at = self.mem(raw).ok()?.1;
        self.tma.load(Ordering::Relaxed).then_some(at)
    }

    fn encode_tensor_map(&self, address: u64, spec: &TensorMapSpec) -> Result<[u8; 128]> {
        self.maps.lock().expect("mock lock").push((address, *spec));
        let mut map = [0u8; 128];
        map[..8].copy_from_slice(&address.to_le_bytes());
        Ok(map)
    }

    fn copy(&self, dst: &RawBuffer, src: &RawBuffer, bytes: usize) -> Result<bool> {
        let from = self.mem(src)?.0.lock().expect("mock lock")[..bytes].to_vec();
        self.mem(dst)?.0.lock().expect("mock lock")[..bytes].copy_from_slice(&from);
        Ok(true)
    }
}
