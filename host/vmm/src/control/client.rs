//! A client of the control socket: one JSON request line out, one reply
//! line back (`docs/control.md`). The CLI's `wasmvisor policy` commands,
//! the hot-swap benchmark and the end-to-end tests all talk through it.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::protocol::Reply;

/// Why a control request got no reply. The cause is part of each
/// message (not a `source`), so the one line the CLI prints says it once.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to control socket {}: {error}", path.display())]
    Connect { path: PathBuf, error: io::Error },
    #[error("cannot send to {}: {error}", path.display())]
    Send { path: PathBuf, error: io::Error },
    #[error("no reply from {}: {error}", path.display())]
    Receive { path: PathBuf, error: io::Error },
    #[error("{} closed the connection without replying", path.display())]
    Closed { path: PathBuf },
    #[error("cannot encode the request: {0}")]
    Encode(serde_json::Error),
    #[error("unreadable reply from {}: {error}", path.display())]
    Unreadable {
        path: PathBuf,
        error: serde_json::Error,
    },
}

/// The longest path a Unix socket address holds (`sun_path`, less its
/// NUL).
const SUN_PATH_MAX: usize = 107;

/// Connects to the socket at `path`. A path too long for a socket address
/// (a VM run by containerd, whose socket lies in a bundle directory named
/// after a 64-character container ID: docs/containerd.md) is reached
/// through its directory's descriptor, `/proc/self/fd/N/NAME`.
fn connect_unix(path: &Path) -> io::Result<UnixStream> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) if path.as_os_str().len() > SUN_PATH_MAX => {
            let dir = std::fs::File::open(dir)?;
            UnixStream::connect(Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name))
        }
        _ => UnixStream::connect(path),
    }
}

/// One connection to a VM's control socket. Requests on it are answered
/// in order.
pub struct ControlClient {
    path: PathBuf,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl ControlClient {
    /// Connects to `path`; a reply that takes longer than `timeout` is an
    /// error (a cold swap compiles the policy before it answers).
    pub fn connect(path: &Path, timeout: Duration) -> Result<ControlClient, ClientError> {
        let connect = |error| ClientError::Connect {
            path: path.to_path_buf(),
            error,
        };
        let writer = connect_unix(path).map_err(connect)?;
        writer.set_read_timeout(Some(timeout)).map_err(connect)?;
        let reader = BufReader::new(writer.try_clone().map_err(connect)?);
        Ok(ControlClient {
            path: path.to_path_buf(),
            writer,
            reader,
        })
    }

    /// Writes `bytes` as they are: malformed requests included.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.writer
            .write_all(bytes)
            .map_err(|error| ClientError::Send {
                path: self.path.clone(),
                error,
            })
    }

    /// The next reply line, without its newline; `None` once the server
    /// has closed the connection.
    pub fn read_line(&mut self) -> Result<Option<String>, ClientError> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) => Ok(Some(line.trim_end_matches('\n').to_string())),
            Err(error) => Err(ClientError::Receive {
                path: self.path.clone(),
                error,
            }),
        }
    }

    /// Sends `request` as one line and returns the reply line.
    pub fn request_line(&mut self, request: &impl Serialize) -> Result<String, ClientError> {
        let mut line = serde_json::to_vec(request).map_err(ClientError::Encode)?;
        line.push(b'\n');
        // A server that turns the peer away answers before reading: if the
        // write fails, its reply may still be waiting.
        let sent = self.send_raw(&line);
        match self.read_line() {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err(sent.err().unwrap_or(ClientError::Closed {
                path: self.path.clone(),
            })),
            Err(e) => Err(sent.err().unwrap_or(e)),
        }
    }

    /// Sends `request` and parses its reply.
    pub fn request(&mut self, request: &impl Serialize) -> Result<Reply, ClientError> {
        let line = self.request_line(request)?;
        serde_json::from_str(&line).map_err(|error| ClientError::Unreadable {
            path: self.path.clone(),
            error,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    /// A one-connection server that runs `serve` on the accepted stream.
    fn serve(name: &str, serve: impl FnOnce(UnixStream) + Send + 'static) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "wasmvisor-client-{name}-{}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || serve(listener.accept().unwrap().0));
        path
    }

    fn connect(path: &Path) -> ControlClient {
        ControlClient::connect(path, Duration::from_secs(10)).unwrap()
    }

    #[test]
    fn a_request_gets_the_reply_line() {
        let path = serve("reply", |stream| {
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            assert_eq!(line, "{\"op\":\"list\"}\n");
            (&stream)
                .write_all(b"{\"ok\":true,\"generation\":3}\n")
                .unwrap();
        });
        let reply = connect(&path)
            .request(&serde_json::json!({"op": "list"}))
            .unwrap();
        assert!(reply.ok);
        assert_eq!(reply.generation, Some(3));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_socket_path_too_long_for_an_address_is_reached_through_its_directory() {
        let dir = std::env::temp_dir()
            .join(format!("wasmvisor-client-long-{}", std::process::id()))
            .join("d".repeat(64))
            .join("e".repeat(40));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.sock");
        assert!(path.as_os_str().len() > SUN_PATH_MAX);
        let handle = std::fs::File::open(&dir).unwrap();
        let short = format!("/proc/self/fd/{}/control.sock", handle.as_raw_fd());
        let listener = UnixListener::bind(short).unwrap();
        std::thread::spawn(move || {
            let stream = listener.accept().unwrap().0;
            (&stream).write_all(b"{\"ok\":true}\n").unwrap();
        });
        let reply = connect(&path).request(&serde_json::json!({"op": "list"}));
        assert!(reply.unwrap().ok);
        drop(handle);
        let _ = std::fs::remove_dir_all(dir.parent().unwrap().parent().unwrap());
    }

    #[test]
    fn a_server_that_closes_without_replying_is_an_error_naming_the_socket() {
        let path = serve("closed", drop);
        let err = connect(&path)
            .request(&serde_json::json!({"op": "list"}))
            .unwrap_err();
        assert!(
            // EOF, or a reset when the request was still unread.
            matches!(
                err,
                ClientError::Closed { .. } | ClientError::Send { .. } | ClientError::Receive { .. }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn an_unreadable_reply_and_a_missing_socket_are_errors() {
        let path = serve("garbage", |stream| {
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            (&stream).write_all(b"not json\n").unwrap();
        });
        let err = connect(&path)
            .request(&serde_json::json!({"op": "list"}))
            .unwrap_err();
        assert!(matches!(err, ClientError::Unreadable { .. }), "{err}");
        let _ = std::fs::remove_file(&path);
        let err = ControlClient::connect(&path, Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    }
}
