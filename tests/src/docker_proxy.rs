//! A Docker Engine socket that a test can stop: a Unix-socket proxy to the real engine. A node
//! pointed at it (`workloads.docker_socket`) loses its Docker when the proxy stops (the socket
//! disappears and open connections are cut, as when `dockerd` stops) and gets it back when the
//! proxy resumes; every other user of the engine is unaffected. It can also hold every image pull
//! for a while and then refuse it itself, as a slow registry without the image would: a pull never
//! reaches the engine, so no test sends traffic to a registry.

use std::io::ErrorKind;
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// The proxy; stopped when dropped.
#[derive(Debug)]
pub struct DockerProxy {
    path: PathBuf,
    upstream: PathBuf,
    hold: Option<(Hold, Duration)>,
    running: Option<Running>,
}

/// Which requests a proxy holds back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Image pulls (`POST …/images/create`), as a slow registry would; then the proxy answers
    /// 404 itself (the engine, and so any registry, never sees the pull).
    Pulls,
    /// Image checks (`GET …/images/<name>/json`), which come before anything else of a
    /// `workload.run`: a wide window between a node's checks and its container's creation.
    ImageChecks,
}

impl Hold {
    fn matches(self, chunk: &[u8]) -> bool {
        let has = |needle: &[u8]| chunk.windows(needle.len()).any(|w| w == needle);
        match self {
            Self::Pulls => chunk.starts_with(b"POST ") && has(b"/images/create"),
            Self::ImageChecks => chunk.starts_with(b"GET ") && has(b"/images/") && has(b"/json "),
        }
    }
}

#[derive(Debug)]
struct Running {
    stop: Arc<AtomicBool>,
    accept: JoinHandle<()>,
    connections: Arc<Mutex<Vec<UnixStream>>>,
}

/// The engine's own socket: `DOCKER_HOST` when it names a Unix socket, else the default.
fn engine_socket() -> PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"))
}

impl DockerProxy {
    /// Serves a proxy of the engine's socket at `path`.
    pub fn start(path: &Path) -> Self {
        Self::serve(path, None)
    }

    /// Serves a proxy of the engine's socket at `path` that holds each image pull (`POST
    /// …/images/create`) for `delay`, then refuses it with a 404 of its own.
    pub fn with_slow_pulls(path: &Path, delay: Duration) -> Self {
        Self::serve(path, Some((Hold::Pulls, delay)))
    }

    /// Serves a proxy of the engine's socket at `path` that holds the requests `hold` names for
    /// `delay` (image checks then go on to the engine; pulls are refused, see [`Hold::Pulls`]).
    pub fn holding(path: &Path, hold: Hold, delay: Duration) -> Self {
        Self::serve(path, Some((hold, delay)))
    }

    fn serve(path: &Path, hold: Option<(Hold, Duration)>) -> Self {
        let mut proxy = Self {
            path: path.to_path_buf(),
            upstream: engine_socket(),
            hold,
            running: None,
        };
        proxy.resume();
        proxy
    }

    /// The proxy's socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Docker stops for the proxy's users: the socket goes away and open connections are cut.
    pub fn stop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        running.stop.store(true, Ordering::SeqCst);
        let _ = running.accept.join();
        for stream in running
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let _ = std::fs::remove_file(&self.path);
    }

    /// Docker is back.
    pub fn resume(&mut self) {
        if self.running.is_some() {
            return;
        }
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path)
            .unwrap_or_else(|e| panic!("binding {}: {e}", self.path.display()));
        listener.set_nonblocking(true).expect("non-blocking accept");
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (stop, connections, upstream, delay) = (
                Arc::clone(&stop),
                Arc::clone(&connections),
                self.upstream.clone(),
                self.hold,
            );
            std::thread::spawn(move || {
                accept_loop(&listener, &upstream, delay, &stop, &connections)
            })
        };
        self.running = Some(Running {
            stop,
            accept,
            connections,
        });
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(
    listener: &UnixListener,
    upstream: &Path,
    hold: Option<(Hold, Duration)>,
    stop: &AtomicBool,
    connections: &Mutex<Vec<UnixStream>>,
) {
    while !stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(_) => continue,
        };
        let _ = client.set_nonblocking(false);
        let Ok(engine) = UnixStream::connect(upstream) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let (Ok(client_copy), Ok(engine_copy)) = (client.try_clone(), engine.try_clone()) else {
            continue;
        };
        {
            let mut open = connections.lock().unwrap_or_else(PoisonError::into_inner);
            if let (Ok(a), Ok(b)) = (client.try_clone(), engine.try_clone()) {
                open.push(a);
                open.push(b);
            }
        }
        match hold {
            Some((what, delay)) => {
                std::thread::spawn(move || pipe_holding(client, engine_copy, what, delay))
            }
            None => std::thread::spawn(move || pipe(client, engine_copy)),
        };
        std::thread::spawn(move || pipe(engine, client_copy));
    }
}

/// The engine's answer to a pull of an image no registry has, given by the proxy itself.
const PULL_REFUSED: &str = r#"{"message":"pull access denied for this image: not found"}"#;

/// Copies a client's requests to the engine like [`pipe`], holding back for `delay` any chunk
/// that starts a request `what` names. A held pull is then answered here with a 404 and never
/// forwarded (clients of the engine API wait for each answer before the next request).
fn pipe_holding(mut from: UnixStream, mut to: UnixStream, what: Hold, delay: Duration) {
    use std::io::{Read as _, Write as _};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let chunk = &buffer[..read];
        if what.matches(chunk) {
            std::thread::sleep(delay);
            if what == Hold::Pulls {
                let answer = format!(
                    "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{PULL_REFUSED}",
                    PULL_REFUSED.len()
                );
                if from.write_all(answer.as_bytes()).is_err() {
                    break;
                }
                continue;
            }
        }
        if to.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

/// Copies `from` to `to` until either side closes, then closes both directions.
fn pipe(mut from: UnixStream, mut to: UnixStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
