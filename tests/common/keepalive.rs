//! A keep-alive connection to the daemon's local API, answer by answer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::{Daemon, HttpResponse};

/// A keep-alive connection to the daemon's local API.
pub struct Connection {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl Connection {
    /// Connects to the daemon's API.
    pub fn open(daemon: &Daemon) -> Connection {
        let stream = TcpStream::connect(("127.0.0.1", daemon.port())).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Connection {
            stream,
            pending: Vec::new(),
        }
    }

    /// Sends `GET <capability><path>` with these header lines and reads one answer.
    pub fn get(&mut self, daemon: &Daemon, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        let mut head = format!(
            "GET /{}/gh{path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n",
            daemon.capability(),
            daemon.port()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes()).unwrap();
        self.read_answer()
    }

    /// Reads one answer (every answer here has a `content-length`).
    pub fn read_answer(&mut self) -> HttpResponse {
        let end = loop {
            if let Some(at) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            self.fill();
        };
        let head = String::from_utf8(self.pending[..end].to_vec()).unwrap();
        self.pending.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| l.split_once(':').unwrap())
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map(|(_, v)| v.parse().unwrap())
            .expect("a content-length (every answer here has its body in memory)");
        while self.pending.len() < length {
            self.fill();
        }
        let body = self.pending.drain(..length).collect();
        HttpResponse {
            status: status.parse().unwrap(),
            headers,
            body,
        }
    }

    fn fill(&mut self) {
        let mut buf = [0u8; 65536];
        let n = self.stream.read(&mut buf).expect("read");
        assert!(n > 0, "the daemon closed the connection mid-answer");
        self.pending.extend_from_slice(&buf[..n]);
    }
}
