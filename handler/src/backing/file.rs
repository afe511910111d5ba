//! File backing: regular files and block devices, preadv/pwritev straight
//! into the caller's iovecs, O_DIRECT by default, fallocate for discard.
//!
//! O_DIRECT needs buffers whose address and length are multiples of the
//! device's logical block size. The TCMU data area is page-aligned, so ring
//! buffers qualify; any other list (tests, unaligned tails) goes through an
//! aligned bounce buffer in chunks of [`BOUNCE_CHUNK`] bytes.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{FallocateFlags, FileType, Mode, OFlags, SeekFrom};
use rustix::io::{Errno, ReadWriteFlags};

use super::iov::{self, AlignedBuf, IOV_MAX};
use super::{Backing, Extent};

/// Bytes moved per bounce-buffer round trip (and per zero-fill write).
pub const BOUNCE_CHUNK: usize = 1 << 20;

/// How to open a file backing.
#[derive(Debug, Clone)]
pub struct FileOptions {
    /// Open with O_DIRECT (bypass the page cache: required when several
    /// nodes share the image).
    pub direct: bool,
    /// Open read-only even if the file is writable.
    pub read_only: bool,
    /// Size to expose (the TCMU `dev_size`); `None` = the file's size.
    pub size: Option<u64>,
    /// Grow a regular file that is smaller than `size` (otherwise an error).
    pub grow: bool,
    /// O_DIRECT buffer and offset alignment (power of two); 0 = ask the
    /// kernel (statx STATX_DIOALIGN, 6.1+), else 512.
    pub dio_align: usize,
}

impl Default for FileOptions {
    fn default() -> Self {
        Self {
            direct: true,
            read_only: false,
            size: None,
            grow: false,
            dio_align: 0,
        }
    }
}

/// Why a backing file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// open(2) or fstat failed.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The image path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file system refuses O_DIRECT (tmpfs, some FUSE file systems).
    #[error(
        "{path}: its file system does not support O_DIRECT; put shared images on a file system or device that does, or set direct=0 for a single-node image"
    )]
    NoDirectIo {
        /// The image path.
        path: PathBuf,
    },
    /// Neither a regular file nor a block device.
    #[error("{0} is neither a regular file nor a block device")]
    BadType(PathBuf),
    /// The configured size exceeds the image and growing was not asked for.
    #[error("{path} has {have} bytes, {want} requested (set grow to extend it)")]
    TooSmall {
        /// The image path.
        path: PathBuf,
        /// Current size.
        have: u64,
        /// Requested size.
        want: u64,
    },
    /// Extending the file failed.
    #[error("cannot grow {path}: {source}")]
    Grow {
        /// The image path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The alignment is not a power of two.
    #[error("dio_align {0} is not a power of two")]
    BadAlign(usize),
}

/// A regular file or block device serving as a LU's medium.
#[derive(Debug)]
pub struct FileBacking {
    file: File,
    /// Exposed size; changes only through [`FileBacking::resize`].
    len: AtomicU64,
    read_only: bool,
    direct: bool,
    align: usize,
    block_device: bool,
}

fn open_fd(path: &Path, write: bool, direct: bool) -> io::Result<File> {
    let mut flags = OFlags::CLOEXEC | if write { OFlags::RDWR } else { OFlags::RDONLY };
    if direct {
        flags |= OFlags::DIRECT;
    }
    Ok(File::from(rustix::fs::open(path, flags, Mode::empty())?))
}

/// The file offset alignment O_DIRECT needs here: what statx reports
/// (STATX_DIOALIGN, Linux 6.1+), else the classic 512.
fn detect_dio_align(file: &File) -> usize {
    use rustix::fs::{AtFlags, StatxFlags, statx};
    match statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN) {
        Ok(st)
            if st.stx_mask & StatxFlags::DIOALIGN.bits() != 0 && st.stx_dio_offset_align != 0 =>
        {
            let off = usize::try_from(st.stx_dio_offset_align).unwrap_or(4096);
            let mem = usize::try_from(st.stx_dio_mem_align).unwrap_or(0);
            off.max(mem).max(512).next_power_of_two()
        }
        _ => 512,
    }
}

fn libc_einval() -> i32 {
    Errno::INVAL.raw_os_error()
}

impl FileBacking {
    /// Open `path`. A file we may not write is opened read-only and
    /// reported write-protected instead of failing.
    pub fn open(path: impl AsRef<Path>, opts: &FileOptions) -> Result<Self, OpenError> {
        let path = path.as_ref();
        let oe = |source: io::Error| {
            if opts.direct && source.raw_os_error() == Some(libc_einval()) {
                return OpenError::NoDirectIo {
                    path: path.to_owned(),
                };
            }
            OpenError::Open {
                path: path.to_owned(),
                source,
            }
        };
        if opts.dio_align != 0 && !opts.dio_align.is_power_of_two() {
            return Err(OpenError::BadAlign(opts.dio_align));
        }
        let (file, read_only) = if opts.read_only {
            (open_fd(path, false, opts.direct).map_err(oe)?, true)
        } else {
            match open_fd(path, true, opts.direct) {
                Ok(f) => (f, false),
                Err(e)
                    if matches!(
                        e.raw_os_error().map(Errno::from_raw_os_error),
                        Some(Errno::ACCESS | Errno::ROFS | Errno::PERM)
                    ) =>
                {
                    (open_fd(path, false, opts.direct).map_err(oe)?, true)
                }
                Err(e) => return Err(oe(e)),
            }
        };
        let st = rustix::fs::fstat(&file).map_err(|e| oe(e.into()))?;
        let ftype = FileType::from_raw_mode(st.st_mode);
        let block_device = match ftype {
            FileType::RegularFile => false,
            FileType::BlockDevice => true,
            _ => return Err(OpenError::BadType(path.to_owned())),
        };
        let have = if block_device {
            // Seeking to the end gives a block device's size without an ioctl.
            rustix::fs::seek(&file, SeekFrom::End(0)).map_err(|e| oe(e.into()))?
        } else {
            file.metadata().map_err(oe)?.len()
        };
        let len = match opts.size {
            None => have,
            Some(want) if want <= have => want,
            Some(want) if opts.grow && !block_device && !read_only => {
                file.set_len(want).map_err(|source| OpenError::Grow {
                    path: path.to_owned(),
                    source,
                })?;
                want
            }
            Some(want) => {
                return Err(OpenError::TooSmall {
                    path: path.to_owned(),
                    have,
                    want,
                });
            }
        };
        let align = if opts.dio_align != 0 {
            opts.dio_align
        } else {
            detect_dio_align(&file)
        };
        Ok(Self {
            file,
            len: AtomicU64::new(len),
            read_only,
            direct: opts.direct,
            align,
            block_device,
        })
    }

    /// Change the exposed size (a live TCMU dev_size reconfiguration).
    /// Growing past the end of a regular file extends it only if `grow`;
    /// block devices cannot grow beyond their current size.
    pub fn resize(&self, size: u64, grow: bool) -> io::Result<()> {
        let have = if self.block_device {
            rustix::fs::seek(&self.file, SeekFrom::End(0))?
        } else {
            self.file.metadata()?.len()
        };
        if size > have {
            if !grow || self.block_device || self.read_only {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("size {size} exceeds the image's {have} bytes"),
                ));
            }
            self.file.set_len(size)?;
        }
        self.len.store(size, Ordering::Release);
        Ok(())
    }

    /// A block device's physical block size (what READ CAPACITY(16)
    /// reports as LOGICAL BLOCKS PER PHYSICAL BLOCK). `None` for a file,
    /// as LIO's fileio: a file system block is not a medium constraint an
    /// initiator should align to (and libiscsi's GET LBA STATUS tests
    /// assume one logical block per physical block for files).
    #[must_use]
    pub fn physical_block_size(&self) -> Option<u32> {
        let st = rustix::fs::fstat(&self.file).ok()?;
        if FileType::from_raw_mode(st.st_mode) == FileType::BlockDevice {
            rustix::fs::ioctl_blkpbszget(&self.file).ok()
        } else {
            None
        }
    }

    /// The O_DIRECT offset/buffer alignment in use.
    #[must_use]
    pub fn dio_align(&self) -> usize {
        self.align
    }

    /// True if opened with O_DIRECT.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    fn needs_bounce(&self, bufs: &[&[u8]], offset: u64) -> bool {
        self.direct
            && (!offset.is_multiple_of(self.align as u64) || !iov::is_aligned(bufs, self.align))
    }

    fn check_range(&self, offset: u64, len: usize) -> io::Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "beyond end of backing",
            )),
        }
    }

    /// preadv until `bufs` is full; a read past EOF yields zeros.
    fn preadv_all(&self, mut bufs: &mut [IoSliceMut<'_>], mut offset: u64) -> io::Result<()> {
        while !bufs.is_empty() {
            let n = bufs.len().min(IOV_MAX);
            let got = match rustix::io::preadv(&self.file, &mut bufs[..n], offset) {
                Ok(g) => g,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            };
            if got == 0 {
                for b in bufs.iter_mut() {
                    b.fill(0);
                }
                return Ok(());
            }
            offset += got as u64;
            IoSliceMut::advance_slices(&mut bufs, got);
        }
        Ok(())
    }

    fn pwritev_all(
        &self,
        mut bufs: &mut [IoSlice<'_>],
        mut offset: u64,
        fua: bool,
    ) -> io::Result<()> {
        let flags = if fua {
            ReadWriteFlags::DSYNC
        } else {
            ReadWriteFlags::empty()
        };
        while !bufs.is_empty() {
            let n = bufs.len().min(IOV_MAX);
            let put = match rustix::io::pwritev2(&self.file, &bufs[..n], offset, flags) {
                Ok(p) => p,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            };
            if put == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            offset += put as u64;
            IoSlice::advance_slices(&mut bufs, put);
        }
        Ok(())
    }

    fn zero_fill(&self, offset: u64, len: u64) -> io::Result<()> {
        let zeros = AlignedBuf::zeroed(BOUNCE_CHUNK, self.align);
        let mut done = 0u64;
        while done < len {
            let n = usize::try_from((len - done).min(BOUNCE_CHUNK as u64)).unwrap_or(BOUNCE_CHUNK);
            self.pwritev_all(
                &mut [IoSlice::new(&zeros.as_slice()[..n])],
                offset + done,
                false,
            )?;
            done += n as u64;
        }
        Ok(())
    }
}

impl Backing for FileBacking {
    fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    fn prefetch(&self, offset: u64, len: u64) {
        // With O_DIRECT every read goes to the medium: nothing to warm.
        if self.direct {
            return;
        }
        let Some(len) = std::num::NonZeroU64::new(len) else {
            return;
        };
        // Only a hint; a failure changes nothing the initiator can see.
        let _ = rustix::fs::fadvise(&self.file, offset, Some(len), rustix::fs::Advice::WillNeed);
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn async_file(&self) -> Option<(std::os::fd::BorrowedFd<'_>, usize)> {
        use std::os::fd::AsFd;
        Some((self.file.as_fd(), if self.direct { self.align } else { 1 }))
    }

    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        let total = iov::total_len_mut(bufs);
        self.check_range(offset, total)?;
        let plain: Vec<&[u8]> = bufs.iter().map(|b| &b[..]).collect();
        if !self.needs_bounce(&plain, offset) {
            return self.preadv_all(bufs, offset);
        }
        let mut bounce = AlignedBuf::zeroed(
            BOUNCE_CHUNK.min(total.next_multiple_of(self.align)),
            self.align,
        );
        let mut done = 0;
        while done < total {
            let n = (total - done).min(BOUNCE_CHUNK);
            let padded = n.next_multiple_of(self.align);
            let buf = &mut bounce.as_mut_slice()[..padded];
            // The medium is a whole number of blocks, so reading the padded
            // length stays inside the file or hits EOF (zeros).
            self.preadv_all(&mut [IoSliceMut::new(buf)], offset + done as u64)?;
            iov::scatter(bufs, done, &buf[..n]);
            done += n;
        }
        Ok(())
    }

    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64, fua: bool) -> io::Result<()> {
        if self.read_only {
            return Err(Errno::ROFS.into());
        }
        let total = iov::total_len(bufs);
        self.check_range(offset, total)?;
        let plain: Vec<&[u8]> = bufs.iter().map(|b| &b[..]).collect();
        if !self.needs_bounce(&plain, offset) {
            let mut own: Vec<IoSlice<'_>> = bufs.to_vec();
            return self.pwritev_all(&mut own, offset, fua);
        }
        if !total.is_multiple_of(self.align) || !offset.is_multiple_of(self.align as u64) {
            // A partial-block O_DIRECT write would need read-modify-write;
            // the SCSI layer never issues one with block sizes >= dio_align.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "O_DIRECT write not aligned to dio_align",
            ));
        }
        let mut bounce = AlignedBuf::zeroed(BOUNCE_CHUNK.min(total), self.align);
        let mut done = 0;
        while done < total {
            let n = (total - done).min(BOUNCE_CHUNK);
            let buf = &mut bounce.as_mut_slice()[..n];
            iov::gather(bufs, done, buf);
            self.pwritev_all(&mut [IoSlice::new(buf)], offset + done as u64, fua)?;
            done += n;
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        rustix::fs::fdatasync(&self.file).map_err(Into::into)
    }

    fn supports_discard(&self) -> bool {
        // Every file and block device can deallocate (or at least zero,
        // see `discard`). Read-only is write protection, reported as such
        // by the SCSI layer, not a medium without provisioning.
        true
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only {
            return Err(Errno::ROFS.into());
        }
        self.check_range(offset, usize::try_from(len).unwrap_or(usize::MAX))?;
        match rustix::fs::fallocate(
            &self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        ) {
            Ok(()) => Ok(()),
            // Filesystems and devices without hole punching still zero.
            Err(Errno::OPNOTSUPP) => self.zero_fill(offset, len),
            Err(e) => Err(e.into()),
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only {
            return Err(Errno::ROFS.into());
        }
        self.check_range(offset, usize::try_from(len).unwrap_or(usize::MAX))?;
        match rustix::fs::fallocate(
            &self.file,
            FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        ) {
            Ok(()) => Ok(()),
            Err(Errno::OPNOTSUPP | Errno::INVAL) => self.zero_fill(offset, len),
            Err(e) => Err(e.into()),
        }
    }

    fn extent(&self, offset: u64) -> io::Result<Extent> {
        let size = self.len();
        if offset >= size {
            return Ok(Extent {
                mapped: true,
                len: 0,
            });
        }
        if self.block_device {
            return Ok(Extent {
                mapped: true,
                len: size - offset,
            });
        }
        let data = match rustix::fs::seek(&self.file, SeekFrom::Data(offset)) {
            Ok(d) => d,
            // ENXIO: no data at or after offset.
            Err(Errno::NXIO) => size,
            Err(e) => return Err(e.into()),
        };
        if data > offset {
            return Ok(Extent {
                mapped: false,
                len: data.min(size) - offset,
            });
        }
        let hole = rustix::fs::seek(&self.file, SeekFrom::Hole(offset))?;
        Ok(Extent {
            mapped: true,
            len: hole.min(size) - offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn temp_image(len: u64) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(len).unwrap();
        f
    }

    #[test]
    fn direct_aligned_and_bounced_roundtrip() {
        let img = temp_image(1 << 20);
        for direct in [true, false] {
            let b = FileBacking::open(
                img.path(),
                &FileOptions {
                    direct,
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(b.len(), 1 << 20);
            // Aligned single buffer: no bounce.
            let mut a = AlignedBuf::zeroed(8192, 4096);
            a.as_mut_slice().fill(0x5a);
            b.write_vectored_at(&[IoSlice::new(a.as_slice())], 8192, true)
                .unwrap();
            // Unaligned, split buffers: bounce path.
            let v1 = vec![1u8; 1000];
            let v2 = vec![2u8; 4096 - 1000 + 4096];
            b.write_vectored_at(&[IoSlice::new(&v1), IoSlice::new(&v2)], 16384, false)
                .unwrap();
            let mut r1 = vec![0u8; 3];
            let mut r2 = vec![0u8; 8192 * 2 - 3];
            b.read_vectored_at(
                &mut [IoSliceMut::new(&mut r1), IoSliceMut::new(&mut r2)],
                8192,
            )
            .unwrap();
            let mut all = r1.clone();
            all.extend_from_slice(&r2);
            assert!(all[..8192].iter().all(|&x| x == 0x5a));
            let contents = std::fs::read(img.path()).unwrap();
            assert_eq!(&contents[16384..17384], &v1[..]);
            assert_eq!(&contents[17384..16384 + 8192], &v2[..]);
            b.sync().unwrap();
        }
    }

    #[test]
    fn punch_hole_visible_via_seek_hole() {
        let img = temp_image(0);
        let mut f = img.reopen().unwrap();
        f.write_all(&vec![0xffu8; 256 * 1024]).unwrap();
        f.sync_all().unwrap();
        let b = FileBacking::open(img.path(), &FileOptions::default()).unwrap();
        assert_eq!(
            b.extent(0).unwrap(),
            Extent {
                mapped: true,
                len: 256 * 1024
            }
        );
        b.discard(64 * 1024, 64 * 1024).unwrap();
        assert_eq!(
            b.extent(0).unwrap(),
            Extent {
                mapped: true,
                len: 64 * 1024
            }
        );
        assert_eq!(
            b.extent(64 * 1024).unwrap(),
            Extent {
                mapped: false,
                len: 64 * 1024
            }
        );
        assert_eq!(
            b.extent(128 * 1024).unwrap(),
            Extent {
                mapped: true,
                len: 128 * 1024
            }
        );
        let data = std::fs::read(img.path()).unwrap();
        assert!(data[64 * 1024..128 * 1024].iter().all(|&x| x == 0));
        assert!(data[128 * 1024..].iter().all(|&x| x == 0xff));
        b.write_zeroes(0, 4096).unwrap();
        let data = std::fs::read(img.path()).unwrap();
        assert!(data[..4096].iter().all(|&x| x == 0));
        assert!(b.extent(0).unwrap().mapped);
    }

    #[test]
    fn size_grow_and_too_small() {
        let img = temp_image(4096);
        let e = FileBacking::open(
            img.path(),
            &FileOptions {
                size: Some(65536),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(
            e,
            OpenError::TooSmall {
                have: 4096,
                want: 65536,
                ..
            }
        ));
        let b = FileBacking::open(
            img.path(),
            &FileOptions {
                size: Some(2048),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(b.len(), 2048);
        let b = FileBacking::open(
            img.path(),
            &FileOptions {
                size: Some(65536),
                grow: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(b.len(), 65536);
        assert_eq!(img.as_file().metadata().unwrap().len(), 65536);
        // Live resize: shrink, refuse to grow without permission, grow.
        b.resize(8192, false).unwrap();
        assert_eq!(b.len(), 8192);
        assert!(b.resize(1 << 20, false).is_err());
        assert_eq!(b.len(), 8192);
        b.resize(1 << 20, true).unwrap();
        assert_eq!(b.len(), 1 << 20);
        assert_eq!(img.as_file().metadata().unwrap().len(), 1 << 20);
    }

    #[test]
    fn read_only_file_is_write_protected() {
        let img = temp_image(8192);
        let b = FileBacking::open(
            img.path(),
            &FileOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(b.is_read_only());
        let d = AlignedBuf::zeroed(4096, 4096);
        let e = b
            .write_vectored_at(&[IoSlice::new(d.as_slice())], 0, false)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(Errno::ROFS.raw_os_error()));
        // A file without write permission opens read-only (unless we are
        // root, whom permissions do not stop).
        std::fs::set_permissions(img.path(), std::fs::Permissions::from_mode(0o444)).unwrap();
        let b = FileBacking::open(img.path(), &FileOptions::default()).unwrap();
        let privileged = std::fs::OpenOptions::new()
            .write(true)
            .open(img.path())
            .is_ok();
        assert_eq!(b.is_read_only(), !privileged);
    }

    #[test]
    fn rejects_other_file_types() {
        let dir = tempfile::tempdir().unwrap();
        let e = FileBacking::open(
            dir.path(),
            &FileOptions {
                direct: false,
                read_only: true,
                ..Default::default()
            },
        );
        assert!(e.is_err());
    }
}
