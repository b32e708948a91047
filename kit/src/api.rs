//! A client of the server API by hand, over plain HTTP/1.1 (`Connection: close`): a request
//! with the key or with any headers (none, a wrong key), its status and its JSON body. Each
//! request is bounded by [`DEADLINE`].

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::http::status_of;
use crate::DEADLINE;

/// The API of one node, with its key.
#[derive(Debug, Clone)]
pub struct Api {
    pub addr: SocketAddr,
    pub key: String,
}

/// An API answer: the status, the head (status line and headers) and the body (JSON, or
/// `Value::Null` with the text in `raw`).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: Value,
    pub raw: String,
}

impl Answer {
    /// The value of header `name` (any case), if the answer has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

impl Api {
    pub fn new(addr: SocketAddr, key: &str) -> Api {
        Api {
            addr,
            key: key.to_owned(),
        }
    }

    /// `POST path` with the JSON `body` and the key.
    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        let auth = format!("Bearer {}", self.key);
        self.request(
            "POST",
            path,
            &[("Authorization", &auth)],
            body.to_string().as_bytes(),
        )
        .await
    }

    /// `GET path` with the key.
    pub async fn get(&self, path: &str) -> Answer {
        let auth = format!("Bearer {}", self.key);
        self.request("GET", path, &[("Authorization", &auth)], b"")
            .await
    }

    /// Any request: `method path` with exactly `headers` (no key unless given) and `body`
    /// (sent with its `Content-Length` when not empty).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let exchange = async {
            let mut stream = TcpStream::connect(self.addr).await?;
            stream.write_all(head.as_bytes()).await?;
            // A body the server refuses early (413) may meet a closed socket: what it
            // answered is still read.
            let _ = stream.write_all(body).await;
            let mut response = Vec::new();
            let _ = stream.read_to_end(&mut response).await;
            Ok::<_, std::io::Error>(response)
        };
        let response = timeout(DEADLINE, exchange)
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer before the deadline"))
            .unwrap_or_else(|err| panic!("{method} {path}: {err}"));
        let response = String::from_utf8_lossy(&response).into_owned();
        let (head, raw) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("{method} {path}: not an HTTP response: {response:?}"));
        let status = status_of(head).unwrap_or_else(|| panic!("bad status line in {head:?}"));
        Answer {
            status,
            head: head.to_owned(),
            body: serde_json::from_str(raw).unwrap_or(Value::Null),
            raw: raw.to_owned(),
        }
    }
}
