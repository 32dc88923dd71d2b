//! A non-blocking byte stream for mio: plain TCP or TLS over TCP (rustls, driven by hand).
//!
//! rustls holds no socket: this wrapper moves TLS records between the `TcpStream` and the
//! rustls connection, so tungstenite can treat both cases as one `Read + Write` stream.
//! Every call returns `WouldBlock` instead of waiting; the driver retries on the next mio event.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

/// Plain TCP or TLS (client or server side).
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

/// A rustls connection glued to its TCP socket.
pub struct TlsStream {
    tcp: TcpStream,
    conn: rustls::Connection,
    /// The peer closed the TCP stream (read returned 0).
    eof: bool,
}

impl TlsStream {
    pub fn new(tcp: TcpStream, conn: impl Into<rustls::Connection>) -> TlsStream {
        TlsStream {
            tcp,
            conn: conn.into(),
            eof: false,
        }
    }

    /// Write as many pending TLS records as the socket takes.
    fn write_out(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Read and decrypt what the socket has; `Ok(false)` when nothing was available.
    fn read_in(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        match self.conn.read_tls(&mut self.tcp) {
            Ok(0) => {
                self.eof = true;
                Ok(true)
            }
            Ok(_) => {
                let result = self.conn.process_new_packets();
                // Send alerts and handshake records even when processing failed.
                let _ = self.write_out();
                result.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.eof {
                // TCP closed without close_notify: report it as the end of the stream.
                return Ok(0);
            }
            if !self.read_in()? {
                // Handshake progress may have produced records to send.
                self.write_out()?;
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.conn.writer().write(buf)?;
        self.write_out()?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_out()?;
        if self.conn.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(())
    }
}

impl Stream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(t) => t,
            Stream::Tls(t) => &t.tcp,
        }
    }

    fn tcp_mut(&mut self) -> &mut TcpStream {
        match self {
            Stream::Plain(t) => t,
            Stream::Tls(t) => &mut t.tcp,
        }
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    /// Whether TLS records are still waiting for the socket (plain TCP: never).
    pub fn wants_write(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => t.conn.wants_write(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(t) => t.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(t) => t.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(t) => t.flush(),
            Stream::Tls(t) => t.flush(),
        }
    }
}

impl Source for Stream {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.tcp_mut().register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.tcp_mut().reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.tcp_mut().deregister(registry)
    }
}
