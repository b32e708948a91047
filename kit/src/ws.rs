//! A tokio-tungstenite client connection, the well-behaved client of the tests: its stream
//! type and connecting with a deadline.

use tokio::time::timeout;

use crate::DEADLINE;

/// A tungstenite client stream.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects a tungstenite client to `url`; panics if that fails or takes past the deadline.
pub async fn connect(url: String) -> Ws {
    let (ws, _) = timeout(DEADLINE, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect timed out")
        .expect("connect");
    ws
}
