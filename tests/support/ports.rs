//! A free loopback port for a server a test starts.

/// A port the system just handed out on 127.0.0.1, free again once returned.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a loopback port")
        .local_addr()
        .expect("a bound listener has an address")
        .port()
}
