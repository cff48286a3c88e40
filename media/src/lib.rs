//! vbin's media path: G.711 codecs ([`g711`]), 8/16/48 kHz resampling ([`resample`]) and the
//! Asterisk AudioSocket server ([`audiosocket`]).

pub mod audiosocket;
pub mod clip;
pub mod codecs;
pub mod decode;
pub mod dtmf;
pub mod g711;
pub mod models;
pub mod resample;
pub mod stt;
pub mod tts;

#[cfg(test)]
mod testutil;
