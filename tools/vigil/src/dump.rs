//! Dump files: names, the disk-space check, and the atomic `.partial` to
//! final rename.
//!
//! QEMU writes the dump to `DIR/.NAME.partial`; only after `DUMP_COMPLETED`
//! reports success is it synced and linked to `DIR/NAME`, so a file under a
//! final name is always complete. A failed dump's partial file is removed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::policy::DumpFormat;

/// Margin on top of guest RAM required free before a dump: 5% plus 64 MiB
/// (ELF headers, notes, and other writers of the file system).
pub fn required_space(guest_ram: u64) -> u64 {
    guest_ram
        .saturating_add(guest_ram / 20)
        .saturating_add(64 << 20)
}

/// Bytes available to an unprivileged writer in the file system of `dir`.
pub fn free_space(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated string and st a valid out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Keeps `[A-Za-z0-9._+-]`, replaces anything else with `_`, and never
/// starts with a dot (no hidden files, no `..`).
pub fn sanitize_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if s.starts_with('.') {
        s.replace_range(0..1, "_");
    }
    if s.is_empty() {
        s.push_str("vm");
    }
    s
}

/// Civil date from days since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day, hour, minute, second) in UTC.
fn utc_fields(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    (
        y,
        mo,
        d,
        (t / 3600) as u32,
        (t / 60 % 60) as u32,
        (t % 60) as u32,
    )
}

/// `20260501T120000Z`: compact UTC time stamp for file names.
pub fn file_stamp(secs: i64) -> String {
    let (y, mo, d, h, mi, s) = utc_fields(secs);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// `2026-05-01T12:00:00.123Z`: RFC 3339 UTC time for log records.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (y, mo, dd, h, mi, s) = utc_fields(d.as_secs() as i64);
    format!(
        "{y:04}-{mo:02}-{dd:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
        d.subsec_millis()
    )
}

/// `<vm-name>-<timestamp>.<ext>`.
pub fn dump_file_name(vm: &str, secs: i64, format: DumpFormat) -> String {
    format!(
        "{}-{}.{}",
        sanitize_name(vm),
        file_stamp(secs),
        format.extension()
    )
}

/// The hidden work file QEMU writes a dump `name` to.
pub fn partial_name(name: &str) -> String {
    format!(".{name}.partial")
}

/// Where one dump goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpPaths {
    pub partial: PathBuf,
    pub final_path: PathBuf,
}

/// Chooses free names in `dir`: `<vm>-<stamp>.<ext>`, then `<vm>-<stamp>-1.<ext>`, ...
/// The names stay reserved in this process until the [`Reserved`] guard is
/// dropped, so two VMs of the same name crashing in the same second do not
/// get the same file (QEMU creates the file only later).
pub fn choose_paths(dir: &Path, vm: &str, secs: i64, format: DumpFormat) -> (DumpPaths, Reserved) {
    let base = format!("{}-{}", sanitize_name(vm), file_stamp(secs));
    let ext = format.extension();
    let mut taken = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
    let mut n = 0u32;
    loop {
        let name = if n == 0 {
            format!("{base}.{ext}")
        } else {
            format!("{base}-{n}.{ext}")
        };
        let p = DumpPaths {
            partial: dir.join(partial_name(&name)),
            final_path: dir.join(&name),
        };
        if !exists(&p.final_path) && !exists(&p.partial) && !taken.contains(&p.final_path) {
            taken.insert(p.final_path.clone());
            let guard = Reserved(p.final_path.clone());
            return (p, guard);
        }
        n += 1;
    }
}

static IN_FLIGHT: std::sync::Mutex<std::collections::BTreeSet<PathBuf>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A dump name reserved by [`choose_paths`]; released when dropped.
#[derive(Debug)]
pub struct Reserved(PathBuf);

impl Drop for Reserved {
    fn drop(&mut self) {
        IN_FLIGHT
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0);
    }
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

/// Makes a completed dump visible under its final name: syncs the partial
/// file, links it to the final name (never replacing an existing file; if
/// that name was taken meanwhile, `-N` is added), removes the partial name
/// and syncs the directory. Returns the final path.
pub fn finalize(paths: &DumpPaths) -> io::Result<PathBuf> {
    fs::File::open(&paths.partial)?.sync_all()?;
    let mut target = paths.final_path.clone();
    for n in 1u32.. {
        match fs::hard_link(&paths.partial, &target) {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => {
                target = numbered(&paths.final_path, n);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(e),
            Err(_) => {
                // File systems without hard links: rename, after checking the name is free.
                if exists(&target) {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "dump name taken",
                    ));
                }
                fs::rename(&paths.partial, &target)?;
                sync_dir(&target);
                return Ok(target);
            }
        }
    }
    fs::remove_file(&paths.partial)?;
    sync_dir(&target);
    Ok(target)
}

fn numbered(p: &Path, n: u32) -> PathBuf {
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match p.extension() {
        Some(e) => format!("{stem}-{n}.{}", e.to_string_lossy()),
        None => format!("{stem}-{n}"),
    };
    p.with_file_name(name)
}

fn sync_dir(file: &Path) {
    if let Some(dir) = file.parent() {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Removes a failed dump's partial file (no error if QEMU never created it).
pub fn discard(paths: &DumpPaths) -> io::Result<()> {
    match fs::remove_file(&paths.partial) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Partial files left in `dir` (by a vigil that was killed during a dump).
pub fn stale_partials(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.') && n.ends_with(".partial"))
        })
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::tempdir;
    use std::time::Duration;

    #[test]
    fn stamps() {
        assert_eq!(file_stamp(0), "19700101T000000Z");
        assert_eq!(file_stamp(951_782_400), "20000229T000000Z"); // leap day
        assert_eq!(file_stamp(1_763_712_000 + 3_723), "20251121T090203Z");
        assert_eq!(file_stamp(4_102_444_799), "20991231T235959Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_763_712_000_123)),
            "2025-11-21T08:00:00.123Z"
        );
    }

    #[test]
    fn names() {
        assert_eq!(
            dump_file_name("web1", 0, DumpFormat::Elf),
            "web1-19700101T000000Z.elf"
        );
        assert_eq!(
            dump_file_name("a/b c", 0, DumpFormat::KdumpZlib),
            "a_b_c-19700101T000000Z.kdump"
        );
        assert_eq!(
            dump_file_name("..", 0, DumpFormat::WinDmp),
            "_.-19700101T000000Z.dmp"
        );
        assert_eq!(sanitize_name(""), "vm");
        assert_eq!(
            sanitize_name("guest=web1,debug-threads=on"),
            "guest_web1_debug-threads_on"
        );
        assert_eq!(partial_name("x.elf"), ".x.elf.partial");
    }

    #[test]
    fn space_margin() {
        assert_eq!(required_space(0), 64 << 20);
        assert_eq!(
            required_space(256 << 20),
            (256 << 20) + (256 << 20) / 20 + (64 << 20)
        );
        assert_eq!(required_space(u64::MAX), u64::MAX);
        assert!(free_space(&std::env::temp_dir()).unwrap() > 0);
        assert!(free_space(Path::new("/nonexistent/vigil")).is_err());
    }

    #[test]
    fn choose_avoids_existing_and_reserved_files() {
        let d = tempdir("choose");
        let (p, r) = choose_paths(&d, "vm", 0, DumpFormat::Elf);
        assert_eq!(p.final_path, d.join("vm-19700101T000000Z.elf"));
        assert_eq!(p.partial, d.join(".vm-19700101T000000Z.elf.partial"));
        // reserved, though no file exists yet
        let (p1, r1) = choose_paths(&d, "vm", 0, DumpFormat::Elf);
        assert_eq!(p1.final_path, d.join("vm-19700101T000000Z-1.elf"));
        drop((r, r1));
        fs::write(&p.final_path, b"old").unwrap();
        let (p1, _r1) = choose_paths(&d, "vm", 0, DumpFormat::Elf);
        assert_eq!(p1.final_path, d.join("vm-19700101T000000Z-1.elf"));
        fs::write(&p1.partial, b"busy").unwrap();
        let (p2, _r2) = choose_paths(&d, "vm", 0, DumpFormat::Elf);
        assert_eq!(p2.final_path, d.join("vm-19700101T000000Z-2.elf"));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn finalize_is_atomic_and_never_overwrites() {
        let d = tempdir("finalize");
        let (p, _r) = choose_paths(&d, "vm", 0, DumpFormat::Elf);
        fs::write(&p.partial, b"dump").unwrap();
        assert!(
            !p.final_path.exists(),
            "final name must not exist before finalize"
        );
        let f = finalize(&p).unwrap();
        assert_eq!(f, p.final_path);
        assert_eq!(fs::read(&f).unwrap(), b"dump");
        assert!(!p.partial.exists());
        assert!(stale_partials(&d).is_empty());

        // the final name was taken while the dump ran: the old file stays
        let q = DumpPaths {
            partial: d.join(".again.partial"),
            final_path: f.clone(),
        };
        fs::write(&q.partial, b"new").unwrap();
        let g = finalize(&q).unwrap();
        assert_eq!(g, d.join("vm-19700101T000000Z-1.elf"));
        assert_eq!(fs::read(&f).unwrap(), b"dump");
        assert_eq!(fs::read(&g).unwrap(), b"new");

        // a missing partial file is an error and creates nothing
        let r = DumpPaths {
            partial: d.join(".gone.partial"),
            final_path: d.join("gone.elf"),
        };
        assert!(finalize(&r).is_err());
        assert!(!r.final_path.exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn discard_removes_partial_only() {
        let d = tempdir("discard");
        let (p, _r) = choose_paths(&d, "vm", 0, DumpFormat::Elf);
        discard(&p).unwrap(); // nothing there: fine
        fs::write(&p.partial, b"half").unwrap();
        assert_eq!(stale_partials(&d), vec![p.partial.clone()]);
        discard(&p).unwrap();
        assert!(!p.partial.exists() && !p.final_path.exists());
        fs::remove_dir_all(&d).unwrap();
    }
}
