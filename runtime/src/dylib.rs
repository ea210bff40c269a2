//! Loading a vendor library at run time (HIP, Level Zero) without ever panicking.
//!
//! Each backend declares its entry points once with [`dyn_api!`]: a struct of `extern "C"`
//! function pointers that is filled in one go after `dlopen`. Every symbol is looked up before
//! the first call, so a library that is too old, or not the library we think it is, becomes
//! an error that names the missing symbols instead of a crash at the first call that needs one.

use libloading::Library;

/// A library that loaded, and the name or path it loaded from.
pub(crate) struct Opened {
    pub(crate) library: Library,
    pub(crate) path: String,
}

/// Loads the first of `candidates` that `dlopen` accepts.
///
/// On failure returns one `name: dlerror text` line per candidate, in order, so the error can
/// say exactly where we looked.
pub(crate) fn open_first(candidates: &[String]) -> Result<Opened, Vec<String>> {
    let mut failures = Vec::with_capacity(candidates.len());
    for path in candidates {
        // SAFETY: loading a shared library runs its initialisers; the candidates are the
        // vendor's runtime libraries (or what the user pointed an override at), whose
        // initialisers expect exactly this.
        match unsafe { Library::new(path.as_str()) } {
            Ok(library) => {
                return Ok(Opened {
                    library,
                    path: path.clone(),
                });
            }
            Err(e) => {
                // libloading's own text is only "dlopen failed"; dlerror's, in the source,
                // says why (and usually names the file already).
                let why =
                    std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
                failures.push(if why.contains(path.as_str()) {
                    why
                } else {
                    format!("{path}: {why}")
                });
            }
        }
    }
    Err(failures)
}

/// The library names to try: the override alone when the environment variable `env` is set
/// (so a wrong override is reported, not silently replaced by a system copy), else
/// `defaults`.
pub(crate) fn candidates(env: &str, defaults: impl FnOnce() -> Vec<String>) -> Vec<String> {
    match std::env::var(env) {
        Ok(v) if !v.trim().is_empty() => vec![v.trim().to_owned()],
        _ => defaults(),
    }
}

/// Declares a table of C entry points resolved from a [`Library`].
///
/// ```ignore
/// dyn_api! {
///     /// Doc.
///     pub(crate) struct Api {
///         init: fn(u32) -> i32 = "hipInit";
///     }
/// }
/// // SAFETY: the library exports `hipInit` with this signature.
/// let api = unsafe { Api::resolve(library) }?;   // Err(names of the missing symbols)
/// ```
macro_rules! dyn_api {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $field:ident : fn( $($arg:ty),* $(,)? ) -> $ret:ty = $sym:literal; )*
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $( $(#[$fmeta])* $field: unsafe extern "C" fn($($arg),*) -> $ret, )*
            /// Keeps the library mapped while the function pointers above are in use.
            _library: ::libloading::Library,
        }

        impl $name {
            /// Every symbol of the table, in declaration order.
            #[allow(dead_code)]
            $vis const SYMBOLS: &'static [&'static str] = &[$($sym),*];

            /// Looks up every symbol; on failure returns the names of the missing ones.
            ///
            /// # Safety
            /// `library` must export each symbol with exactly the C signature declared here.
            $vis unsafe fn resolve(
                library: ::libloading::Library,
            ) -> ::std::result::Result<Self, Vec<&'static str>> {
                let mut missing: Vec<&'static str> = Vec::new();
                $(
                    // SAFETY: the caller vouches for the signature; the pointer is only
                    // copied out here, and stays valid because `_library` keeps the library
                    // mapped as long as the table lives.
                    let $field = match unsafe {
                        library.get::<unsafe extern "C" fn($($arg),*) -> $ret>($sym)
                    } {
                        Ok(symbol) => Some(*symbol),
                        Err(_) => {
                            missing.push($sym);
                            None
                        }
                    };
                )*
                let ($(Some($field),)*) = ($($field,)*) else {
                    return Err(missing);
                };
                Ok($name { $($field,)* _library: library })
            }
        }
    };
}

pub(crate) use dyn_api;

/// Reads a NUL-terminated C string from a fixed-size `char` array (device names), lossily.
pub(crate) fn c_chars(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).trim().to_owned()
}
