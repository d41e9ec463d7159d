//! Anonymous page loads on loopback: the flood of issue "anonymous page
//! loads cannot push real users out", shared by `tests/page_flood.rs` and
//! `benches/page_flood.rs`. Bounded in count; keep-alive HTTP/1.1.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// What a flood saw: responses by status.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub ok: usize,
    pub refused: usize,
    pub other: usize,
}

/// Sends `total` `GET /` requests without cookies (each makes a session)
/// over `conns` keep-alive connections to `addr`.
pub async fn page_loads(addr: &str, total: usize, conns: usize) -> Tally {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (addr, next) = (addr.to_owned(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let mut io = BufReader::new(TcpStream::connect(&addr).await.unwrap());
            let mut line = String::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                io.get_mut()
                    .write_all(b"GET / HTTP/1.1\r\nHost: flood\r\n\r\n")
                    .await
                    .unwrap();
                line.clear();
                io.read_line(&mut line).await.unwrap();
                let status: u16 = line
                    .split(' ')
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                let mut len = 0usize;
                loop {
                    line.clear();
                    io.read_line(&mut line).await.unwrap();
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0u8; len];
                io.read_exact(&mut body).await.unwrap();
                match status {
                    200 => t.ok += 1,
                    429 | 503 => t.refused += 1,
                    _ => t.other += 1,
                }
            }
            t
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await.unwrap();
        all.ok += t.ok;
        all.refused += t.refused;
        all.other += t.other;
    }
    all
}
