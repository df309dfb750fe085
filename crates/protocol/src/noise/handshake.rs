//! The XX handshake over `HandshakeMessage` protobuf bytes (unframed), as typestate machines.
//!
//! ```text
//! Initiator                                     Responder
//! Initiator::start(e_c) ── clientHello{e_c} ──▶ Responder::read_client_hello
//!   h = H(h || e_c)   (no MixHash("") here: WhatsApp's deviation)
//! read_server_hello ◀── serverHello{e_s, Enc(s_s), Enc(CertChain)}
//!   MixHash(e_s); MixKey(DH(e_c,e_s)); s_s = DecryptAndHash; MixKey(DH(e_c,s_s));
//!   CertChain = DecryptAndHash; verify chain
//! finish(noise key, ClientPayload) ── clientFinish{Enc(s_c), Enc(payload)} ──▶ read_client_finish
//!   EncryptAndHash(s_c); MixKey(DH(s_c,e_s)); EncryptAndHash(payload); Split
//! ```
//! The initiator writes with the first split key and reads with the second; the responder
//! the opposite.

use prost::Message;

use super::{KeyPair, NoiseError, SymmetricState, Transport, ENCRYPTED_STATIC_LEN};
use crate::cert::{verify_cert_chain, RootKey, VerifiedCertChain};
use crate::proto::handshake_message::{ClientFinish, ClientHello, ServerHello};
use crate::proto::HandshakeMessage;

fn decode(msg: &[u8]) -> Result<HandshakeMessage, NoiseError> {
    HandshakeMessage::decode(msg).map_err(|e| NoiseError::Decode(e.to_string()))
}

fn required<'a>(v: &'a Option<Vec<u8>>, field: &'static str) -> Result<&'a [u8], NoiseError> {
    v.as_deref().ok_or(NoiseError::MissingField(field))
}

fn key32(bytes: &[u8], field: &'static str) -> Result<[u8; 32], NoiseError> {
    bytes.try_into().map_err(|_| NoiseError::BadLength {
        field,
        len: bytes.len(),
        expected: 32,
    })
}

fn check_static_len(bytes: &[u8], field: &'static str) -> Result<(), NoiseError> {
    if bytes.len() == ENCRYPTED_STATIC_LEN {
        Ok(())
    } else {
        Err(NoiseError::BadLength {
            field,
            len: bytes.len(),
            expected: ENCRYPTED_STATIC_LEN,
        })
    }
}

/// The client side before the server's hello. Created with [`Initiator::start`].
#[derive(Debug)]
pub struct Initiator {
    ss: SymmetricState,
    ephemeral: KeyPair,
}

/// What the initiator learned from a valid server hello.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerHelloInfo {
    /// The server's (decrypted, certified) Noise static public key.
    pub server_static: [u8; 32],
    /// The verified certificate chain.
    pub cert: VerifiedCertChain,
}

/// The client side after a valid server hello, waiting for the `ClientPayload` to send.
#[derive(Debug)]
pub struct InitiatorAwaitingFinish {
    ss: SymmetricState,
    server_ephemeral: [u8; 32],
}

/// The initiator's last message and its transport.
#[derive(Debug)]
pub struct ClientFinished {
    /// The `HandshakeMessage{clientFinish}` bytes to send (unframed).
    pub message: Vec<u8>,
    /// The transport cipher (writes with k1, reads with k2).
    pub transport: Transport,
    /// The final handshake hash.
    pub handshake_hash: [u8; 32],
}

impl Initiator {
    /// Starts a handshake with the ephemeral key pair `ephemeral`; returns the state and the
    /// `HandshakeMessage{clientHello{ephemeral}}` bytes to send (unframed).
    pub fn start(ephemeral: KeyPair) -> (Self, Vec<u8>) {
        let mut ss = SymmetricState::new();
        ss.mix_hash(&ephemeral.public);
        // WhatsApp's deviation: no MixHash of the (empty) message-1 payload.
        let msg = HandshakeMessage {
            client_hello: Some(ClientHello {
                ephemeral: Some(ephemeral.public.to_vec()),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec();
        (Self { ss, ephemeral }, msg)
    }

    /// The current handshake hash.
    pub fn handshake_hash(&self) -> [u8; 32] {
        self.ss.handshake_hash()
    }

    /// Processes the server hello: decrypts the server static key and the certificate chain
    /// and verifies the chain against `root` at unix time `now`.
    pub fn read_server_hello(
        self,
        msg: &[u8],
        root: &RootKey,
        now: u64,
    ) -> Result<(InitiatorAwaitingFinish, ServerHelloInfo), NoiseError> {
        let Initiator { mut ss, ephemeral } = self;
        let hello = decode(msg)?
            .server_hello
            .ok_or(NoiseError::MissingField("serverHello"))?;
        let ServerHello {
            ephemeral: e_s,
            r#static: s_enc,
            payload,
            ..
        } = &hello;
        let e_s = key32(
            required(e_s, "serverHello.ephemeral")?,
            "serverHello.ephemeral",
        )?;
        let s_enc = required(s_enc, "serverHello.static")?;
        check_static_len(s_enc, "serverHello.static")?;
        let payload = required(payload, "serverHello.payload")?;

        ss.mix_hash(&e_s);
        ss.mix_key(&ephemeral.dh(&e_s)?);
        let s_s = key32(&ss.decrypt_and_hash(s_enc)?, "server static")?;
        ss.mix_key(&ephemeral.dh(&s_s)?);
        let chain = ss.decrypt_and_hash(payload)?;
        let cert = verify_cert_chain(&chain, root, &s_s, now)?;
        Ok((
            InitiatorAwaitingFinish {
                ss,
                server_ephemeral: e_s,
            },
            ServerHelloInfo {
                server_static: s_s,
                cert,
            },
        ))
    }
}

impl InitiatorAwaitingFinish {
    /// The current handshake hash.
    pub fn handshake_hash(&self) -> [u8; 32] {
        self.ss.handshake_hash()
    }

    /// Sends the client's long-term Noise key `noise_key` and the `ClientPayload` bytes.
    pub fn finish(
        self,
        noise_key: &KeyPair,
        client_payload: &[u8],
    ) -> Result<ClientFinished, NoiseError> {
        let mut ss = self.ss;
        let s_enc = ss.encrypt_and_hash(&noise_key.public)?;
        ss.mix_key(&noise_key.dh(&self.server_ephemeral)?);
        let payload = ss.encrypt_and_hash(client_payload)?;
        let message = HandshakeMessage {
            client_finish: Some(ClientFinish {
                r#static: Some(s_enc),
                payload: Some(payload),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec();
        let (k1, k2) = ss.split();
        Ok(ClientFinished {
            message,
            transport: Transport::new(k1, k2),
            handshake_hash: ss.handshake_hash(),
        })
    }
}

/// The server side before the client's hello.
#[derive(Debug)]
pub struct Responder {
    ss: SymmetricState,
    static_key: KeyPair,
    ephemeral: KeyPair,
    cert_chain: Vec<u8>,
}

/// The server side after sending its hello, waiting for the client's finish.
#[derive(Debug)]
pub struct ResponderAwaitingFinish {
    ss: SymmetricState,
    ephemeral: KeyPair,
}

/// What the responder learned from a valid client finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFinishInfo {
    /// The client's long-term Noise static public key.
    pub client_static: [u8; 32],
    /// The decrypted `ClientPayload` bytes (not decoded here).
    pub client_payload: Vec<u8>,
    /// The final handshake hash.
    pub handshake_hash: [u8; 32],
}

impl Responder {
    /// A responder with the server's static key pair, a fresh ephemeral key pair and the
    /// serialized `CertChain` to send (its leaf must certify `static_key.public`).
    pub fn new(static_key: KeyPair, ephemeral: KeyPair, cert_chain: Vec<u8>) -> Self {
        Self {
            ss: SymmetricState::new(),
            static_key,
            ephemeral,
            cert_chain,
        }
    }

    /// Processes the client hello; returns the `HandshakeMessage{serverHello}` bytes to send.
    pub fn read_client_hello(
        self,
        msg: &[u8],
    ) -> Result<(ResponderAwaitingFinish, Vec<u8>), NoiseError> {
        let Responder {
            mut ss,
            static_key,
            ephemeral,
            cert_chain,
        } = self;
        let hello = decode(msg)?
            .client_hello
            .ok_or(NoiseError::MissingField("clientHello"))?;
        let e_c = key32(
            required(&hello.ephemeral, "clientHello.ephemeral")?,
            "clientHello.ephemeral",
        )?;
        if hello.r#static.is_some() {
            return Err(NoiseError::UnexpectedField("clientHello.static"));
        }
        if hello.payload.is_some() {
            return Err(NoiseError::UnexpectedField("clientHello.payload"));
        }
        ss.mix_hash(&e_c);
        ss.mix_hash(&ephemeral.public);
        ss.mix_key(&ephemeral.dh(&e_c)?);
        let s_enc = ss.encrypt_and_hash(&static_key.public)?;
        ss.mix_key(&static_key.dh(&e_c)?);
        let payload = ss.encrypt_and_hash(&cert_chain)?;
        let msg = HandshakeMessage {
            server_hello: Some(ServerHello {
                ephemeral: Some(ephemeral.public.to_vec()),
                r#static: Some(s_enc),
                payload: Some(payload),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec();
        Ok((ResponderAwaitingFinish { ss, ephemeral }, msg))
    }
}

impl ResponderAwaitingFinish {
    /// The current handshake hash.
    pub fn handshake_hash(&self) -> [u8; 32] {
        self.ss.handshake_hash()
    }

    /// Processes the client finish; returns what the client sent and the transport
    /// (writes with k2, reads with k1).
    pub fn read_client_finish(
        self,
        msg: &[u8],
    ) -> Result<(ClientFinishInfo, Transport), NoiseError> {
        let mut ss = self.ss;
        let finish = decode(msg)?
            .client_finish
            .ok_or(NoiseError::MissingField("clientFinish"))?;
        let s_enc = required(&finish.r#static, "clientFinish.static")?;
        check_static_len(s_enc, "clientFinish.static")?;
        let payload = required(&finish.payload, "clientFinish.payload")?;
        let s_c = key32(&ss.decrypt_and_hash(s_enc)?, "client static")?;
        ss.mix_key(&self.ephemeral.dh(&s_c)?);
        let client_payload = ss.decrypt_and_hash(payload)?;
        let (k1, k2) = ss.split();
        Ok((
            ClientFinishInfo {
                client_static: s_c,
                client_payload,
                handshake_hash: ss.handshake_hash(),
            },
            Transport::new(k2, k1),
        ))
    }
}
