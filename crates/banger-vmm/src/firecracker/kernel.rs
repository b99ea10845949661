//! Kernel images Firecracker can boot.
//!
//! Distribution kernels ship as bzImage (`vmlinuz`), but Firecracker before
//! 1.16 (see [`super::version::Features::boots_bzimage`]) only boots an
//! uncompressed ELF `vmlinux`. A bzImage carries that ELF compressed inside
//! it, so banger finds the compressed payload and decompresses it, instead
//! of asking users for a second kernel build.
//!
//! Decompressors, all pure Rust so the build needs no C toolchain or system
//! library: `lzma-rust2` for xz, because kernels compress with the x86 BCJ
//! filter in front of LZMA2 and `lzma-rs` (the older pure-Rust choice)
//! cannot undo BCJ; `flate2` on its default miniz_oxide backend for gzip;
//! `ruzstd` for zstd (0.7, the last line within the workspace's MSRV).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::version::{features, SemVer};

const ELF_MAGIC: &[u8] = b"\x7fELF";
/// `HdrS` at 0x202 marks the Linux x86 boot protocol's setup header.
const BZIMAGE_MAGIC_OFFSET: usize = 0x202;
const BZIMAGE_MAGIC: &[u8] = b"HdrS";
/// No kernel decompresses to more than this; it bounds what a corrupt or
/// hostile image can make us allocate.
const MAX_VMLINUX: u64 = 1 << 30;

/// What kind of kernel image a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An uncompressed ELF `vmlinux`: every Firecracker boots it.
    Elf,
    /// An x86 bzImage (`vmlinuz`).
    BzImage,
    Unknown,
}

impl KernelFormat {
    /// Looks at the magic numbers only.
    pub fn detect(path: &Path) -> io::Result<KernelFormat> {
        let mut head = Vec::with_capacity(BZIMAGE_MAGIC_OFFSET + 4);
        File::open(path)?
            .take((BZIMAGE_MAGIC_OFFSET + 4) as u64)
            .read_to_end(&mut head)?;
        Ok(Self::of_bytes(&head))
    }

    fn of_bytes(head: &[u8]) -> KernelFormat {
        if head.starts_with(ELF_MAGIC) {
            KernelFormat::Elf
        } else if head.get(BZIMAGE_MAGIC_OFFSET..BZIMAGE_MAGIC_OFFSET + 4) == Some(BZIMAGE_MAGIC) {
            KernelFormat::BzImage
        } else {
            KernelFormat::Unknown
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot read kernel {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("kernel {} is neither an ELF vmlinux nor a bzImage", .path.display())]
    UnknownFormat { path: PathBuf },
    #[error("kernel {} is not a bzImage", .path.display())]
    NotBzImage { path: PathBuf },
    #[error(
        "no compressed payload of bzImage {} decompresses to an ELF vmlinux \
         ({tried} candidates tried; xz, gzip and zstd are supported)",
        .path.display()
    )]
    NoPayload { path: PathBuf, tried: usize },
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Xz,
    Gzip,
    Zstd,
}

const CODECS: [(Codec, &[u8]); 3] = [
    (Codec::Xz, &[0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00]),
    (Codec::Gzip, &[0x1F, 0x8B, 0x08]),
    (Codec::Zstd, &[0x28, 0xB5, 0x2F, 0xFD]),
];

/// Every offset where some codec's magic appears, in file order. Magic
/// bytes also occur by chance inside the setup code or the payload itself,
/// so each is only a candidate.
fn candidates(image: &[u8]) -> Vec<(usize, Codec)> {
    let mut found = Vec::new();
    for (codec, magic) in CODECS {
        found.extend(
            image
                .windows(magic.len())
                .enumerate()
                .filter(|(_, w)| *w == magic)
                .map(|(i, _)| (i, codec)),
        );
    }
    found.sort_by_key(|(i, _)| *i);
    found
}

/// Decompresses one stream starting at `data[0]`, or `None` if it is not a
/// valid stream of `codec` or does not hold an ELF. Trailing bytes after the
/// stream (the rest of the bzImage) are never read as part of it: each
/// decoder stops at the end of its first stream/member/frame.
fn decompress(codec: Codec, data: &[u8]) -> Option<Vec<u8>> {
    let reader: Box<dyn Read + '_> = match codec {
        Codec::Xz => Box::new(lzma_rust2::XzReader::new(data, false)),
        Codec::Gzip => Box::new(flate2::read::GzDecoder::new(data)),
        Codec::Zstd => Box::new(ruzstd::StreamingDecoder::new(data).ok()?),
    };
    let mut reader = reader.take(MAX_VMLINUX);
    // Check the magic before inflating tens of megabytes for nothing.
    let mut out = vec![0u8; ELF_MAGIC.len()];
    reader.read_exact(&mut out).ok()?;
    if out != ELF_MAGIC {
        return None;
    }
    reader.read_to_end(&mut out).ok()?;
    Some(out)
}

/// Writes the ELF kernel inside `bzimage` to `out`, atomically: a temp file
/// in `out`'s directory renamed over it, so a reader (or a concurrent
/// extraction of the same kernel) never sees half a kernel.
pub fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<(), KernelError> {
    extract(bzimage, out, None)
}

/// [`extract_vmlinux`], optionally giving the result `mtime` before it
/// appears under its name.
fn extract(bzimage: &Path, out: &Path, mtime: Option<SystemTime>) -> Result<(), KernelError> {
    let image = std::fs::read(bzimage).map_err(|source| KernelError::Read {
        path: bzimage.to_path_buf(),
        source,
    })?;
    if KernelFormat::of_bytes(&image) != KernelFormat::BzImage {
        return Err(KernelError::NotBzImage {
            path: bzimage.to_path_buf(),
        });
    }
    let found = candidates(&image);
    let vmlinux = found
        .iter()
        .find_map(|&(at, codec)| decompress(codec, &image[at..]))
        .ok_or_else(|| KernelError::NoPayload {
            path: bzimage.to_path_buf(),
            tried: found.len(),
        })?;
    write_atomically(out, &vmlinux, mtime)
}

fn write_atomically(out: &Path, data: &[u8], mtime: Option<SystemTime>) -> Result<(), KernelError> {
    use std::os::unix::fs::PermissionsExt;
    let write = |source| KernelError::Write {
        path: out.to_path_buf(),
        source,
    };
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".vmlinux-")
        .tempfile_in(dir)
        .map_err(write)?;
    tmp.write_all(data).map_err(write)?;
    // Readable like the bzImage it came from (tempfile creates 0600), so a
    // VMM running as another user can open it.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(write)?;
    if let Some(mtime) = mtime {
        tmp.as_file().set_modified(mtime).map_err(write)?;
    }
    tmp.as_file().sync_all().map_err(write)?;
    tmp.persist(out).map_err(|e| write(e.error))?;
    Ok(())
}

/// The kernel to hand Firecracker `version`: `kernel` itself when that
/// Firecracker can boot it (an ELF, or any bzImage from a release that
/// boots them), otherwise the ELF extracted from it, cached in `cache_dir`
/// as `<file name>.vmlinux`.
///
/// The cache is keyed on the source's modification time: the extracted
/// file gets the bzImage's mtime, and any difference (a newer kernel, or an
/// older one copied over it) triggers a fresh extraction.
pub fn kernel_for(
    version: SemVer,
    kernel: &Path,
    cache_dir: &Path,
) -> Result<PathBuf, KernelError> {
    let read = |source| KernelError::Read {
        path: kernel.to_path_buf(),
        source,
    };
    let format = KernelFormat::detect(kernel).map_err(read)?;
    match format {
        KernelFormat::Elf => return Ok(kernel.to_path_buf()),
        KernelFormat::BzImage if features(version).boots_bzimage => return Ok(kernel.to_path_buf()),
        KernelFormat::BzImage => {}
        KernelFormat::Unknown => {
            return Err(KernelError::UnknownFormat {
                path: kernel.to_path_buf(),
            })
        }
    }
    let mut name = kernel.file_name().unwrap_or_default().to_os_string();
    name.push(".vmlinux");
    let cached = cache_dir.join(name);
    let source_mtime = std::fs::metadata(kernel)
        .and_then(|m| m.modified())
        .map_err(read)?;
    let cached_mtime = std::fs::metadata(&cached).and_then(|m| m.modified()).ok();
    if cached_mtime == Some(source_mtime) {
        return Ok(cached);
    }
    extract(kernel, &cached, Some(source_mtime))?;
    Ok(cached)
}

#[cfg(test)]
mod tests;
