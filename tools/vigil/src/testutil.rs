//! A scriptable fake QMP server on a unix socket, for the tests.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use serde_json::{json, Value};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixListener;
use tokio::sync::mpsc;

use crate::endpoint::Endpoint;

/// A fresh directory under the system temp directory.
pub fn tempdir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("vigil-test-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 2, "major": 10}, "package": ""}, "capabilities": ["oob"]}}"#;

/// The handler's answer to a command: the response (`{"return": ...}` or
/// `{"error": ...}`, without `id`) and messages to send after it. A message
/// `{"delay-ms": N}` waits N ms instead of sending.
pub type Answer = (Value, Vec<Value>);

enum Ctl {
    Raw(Vec<u8>),
    Close,
}

pub struct FakeQmp {
    pub dir: PathBuf,
    pub path: PathBuf,
    ctl: mpsc::UnboundedSender<Ctl>,
    /// Every command received: (name, arguments).
    pub commands: Arc<Mutex<Vec<(String, Value)>>>,
    /// The descriptors passed with `getfd`, by name (as QEMU keeps them).
    #[allow(dead_code)]
    pub fds: Fds,
}

/// Descriptors received with `getfd`.
pub type Fds = Arc<Mutex<HashMap<String, std::fs::File>>>;

/// One `recvmsg`: the bytes, and any `SCM_RIGHTS` descriptors into `fds`.
fn recv_with_fds(fd: RawFd, fds: &mut Vec<OwnedFd>) -> std::io::Result<Vec<u8>> {
    let mut data = vec![0u8; 65536];
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below is valid for
    // the recvmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: as above.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: walking the control messages recvmsg filled in.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>());
                fds.push(OwnedFd::from_raw_fd(fd));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    data.truncate(n as usize);
    Ok(data)
}

impl FakeQmp {
    pub async fn start<F>(handler: F) -> FakeQmp
    where
        F: Fn(&str, &Value) -> Answer + Send + Sync + 'static,
    {
        FakeQmp::start_with_fds(move |c, a, _| handler(c, a)).await
    }

    /// A fake whose handler also sees the descriptors passed so far
    /// (`getfd` and `closefd` are handled by the fake itself).
    pub async fn start_with_fds<F>(handler: F) -> FakeQmp
    where
        F: Fn(&str, &Value, &Fds) -> Answer + Send + Sync + 'static,
    {
        let fds: Fds = Arc::default();
        let fds2 = fds.clone();
        let dir = tempdir("fakeqmp");
        let path = dir.join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (ctl, mut ctl_rx) = mpsc::unbounded_channel::<Ctl>();
        let commands = Arc::new(Mutex::new(Vec::new()));
        let log = commands.clone();
        let handler = Arc::new(handler);
        tokio::spawn(async move {
            'accept: loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (r, mut w) = sock.into_split();
                let mut pending: Vec<u8> = Vec::new();
                let mut passed: Vec<OwnedFd> = Vec::new();
                if w.write_all(format!("{GREETING}\n").as_bytes())
                    .await
                    .is_err()
                {
                    continue;
                }
                loop {
                    let line = pending
                        .iter()
                        .position(|&b| b == b'\n')
                        .map(|i| pending.drain(..=i).collect::<Vec<u8>>());
                    let Some(line) = line else {
                        tokio::select! {
                            ready = r.as_ref().readable() => {
                                if ready.is_err() { continue 'accept }
                                let raw = r.as_ref().as_raw_fd();
                                match r.as_ref().try_io(Interest::READABLE, || recv_with_fds(raw, &mut passed)) {
                                    Ok(b) if b.is_empty() => continue 'accept,
                                    Ok(b) => pending.extend_from_slice(&b),
                                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                                    Err(_) => continue 'accept,
                                }
                            }
                            c = ctl_rx.recv() => match c {
                                Some(Ctl::Raw(b)) => { let _ = w.write_all(&b).await; }
                                Some(Ctl::Close) => continue 'accept,
                                None => return,
                            }
                        }
                        continue;
                    };
                    {
                        {
                            let Ok(req) = serde_json::from_slice::<Value>(&line) else {
                                continue;
                            };
                            let cmd = req["execute"].as_str().unwrap_or("").to_string();
                            let args = req.get("arguments").cloned().unwrap_or(json!({}));
                            log.lock().unwrap().push((cmd.clone(), args.clone()));
                            let fdname = args["fdname"].as_str().unwrap_or("").to_string();
                            let (mut resp, after) = match cmd.as_str() {
                                "qmp_capabilities" => (json!({"return": {}}), vec![]),
                                "getfd" => match passed.pop() {
                                    Some(fd) => {
                                        fds2.lock()
                                            .unwrap()
                                            .insert(fdname, std::fs::File::from(fd));
                                        (json!({"return": {}}), vec![])
                                    }
                                    None => (
                                        json!({"error": {"class": "GenericError",
                                        "desc": "No file descriptor supplied via SCM_RIGHTS"}}),
                                        vec![],
                                    ),
                                },
                                "closefd" => {
                                    fds2.lock().unwrap().remove(&fdname);
                                    (json!({"return": {}}), vec![])
                                }
                                _ => handler(&cmd, &args, &fds2),
                            };
                            if let Some(id) = req.get("id") {
                                resp["id"] = id.clone();
                            }
                            if w.write_all(format!("{resp}\n").as_bytes()).await.is_err() {
                                continue 'accept;
                            }
                            for m in after {
                                if let Some(ms) = m.get("delay-ms").and_then(Value::as_u64) {
                                    tokio::time::sleep(Duration::from_millis(ms)).await;
                                } else if w.write_all(format!("{m}\n").as_bytes()).await.is_err() {
                                    continue 'accept;
                                }
                            }
                        }
                    }
                }
            }
        });
        FakeQmp {
            dir,
            path,
            ctl,
            commands,
            fds,
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::Unix(self.path.clone())
    }

    /// Sends bytes as they are to the connected client.
    pub fn send_raw(&self, b: &[u8]) {
        let _ = self.ctl.send(Ctl::Raw(b.to_vec()));
    }

    /// Sends a QMP event.
    pub fn send_event(&self, name: &str, data: Value) {
        let m =
            json!({"event": name, "data": data, "timestamp": {"seconds": 1, "microseconds": 0}});
        self.send_raw(format!("{m}\n").as_bytes());
    }

    /// Closes the current connection (the server keeps accepting).
    pub fn close(&self) {
        let _ = self.ctl.send(Ctl::Close);
    }

    /// The names of the commands received so far.
    pub fn command_names(&self) -> Vec<String> {
        self.commands
            .lock()
            .unwrap()
            .iter()
            .map(|(c, _)| c.clone())
            .collect()
    }
}

impl Drop for FakeQmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `Write` that appends to a shared buffer, for logger output in tests.
#[derive(Clone, Default)]
pub struct SharedBuf(pub Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedBuf {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The JSON lines written so far (each must parse).
    pub fn records(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}
