//! The web viewer's WebSocket protocol (docs/display.md has the full
//! description): server→client JSON text messages for control (hello,
//! mode, cursor position, sync) and binary messages for pixels (a 20-byte
//! little-endian header, then raw RGBA8 or a PNG); client→server JSON text
//! messages, each an [`InputEvent`], an acknowledgement of a sync, or a
//! request for a new display size (the page's "fit guest to window").
//!
//! Flow control: after each batch of updates the server sends
//! `{"type":"sync","seq":N}`; the page answers `{"type":"ack","seq":N}`
//! once it has drawn everything before it. The server keeps at most
//! [`WINDOW`] batches unacknowledged, so a slow page makes the server
//! coalesce damage instead of queueing frames.
//!
//! Resizing: `{"type":"resize","scanout":S,"width":W,"height":H}` asks the
//! guest for a display of W x H device pixels (the page sends it, debounced,
//! when "fit guest to window" is on). [`parse_client`] takes only integers
//! that fit a u32, each side from [`MIN_REQUEST_DIMENSION`] to
//! [`MAX_REQUEST_DIMENSION`] and a scanout below [`crate::store::MAX_SCANOUTS`];
//! the viewer then passes it to [`Display::request_size`], which checks the
//! scanout exists. What fails is ignored (logged at debug); view-only
//! viewers' requests too.

use std::collections::BTreeSet;

use crate::encode::png_from_rgba;
use crate::store::{Update, MAX_REQUEST_DIMENSION, MIN_REQUEST_DIMENSION};
use crate::{Display, DisplayError, InputEvent, Rect};

/// The protocol's version, in the hello message.
pub const VERSION: u32 = 1;
/// Length of a binary message's header.
pub const HEADER_LEN: usize = 20;
/// Binary message kinds (header byte 0).
pub const KIND_RECT: u8 = 1;
pub const KIND_CURSOR: u8 = 2;
/// Pixel encodings (header byte 1).
pub const ENCODING_RAW: u8 = 0;
pub const ENCODING_PNG: u8 = 1;
/// Batches the server sends before waiting for an acknowledgement.
pub const WINDOW: u64 = 2;
/// With [`EncodingPolicy::Auto`], rectangles of at least this many pixels
/// are sent as PNG, smaller ones raw.
pub const AUTO_PNG_MIN_PIXELS: u64 = 64 * 64;
/// The longest client message accepted.
pub const MAX_CLIENT_MESSAGE: usize = 4096;
/// Wheel steps forwarded per event, at most.
pub const MAX_WHEEL: i32 = 32;

const KEY_MAX: u16 = 0x2ff;
const BTN_MOUSE_FIRST: u16 = 0x110;
const BTN_MOUSE_LAST: u16 = 0x117;

/// How a viewer wants pixels encoded (`/ws?encoding=raw|png|auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncodingPolicy {
    Raw,
    Png,
    #[default]
    Auto,
}

impl EncodingPolicy {
    /// From a query string such as `encoding=png&x=1` (Auto when absent or
    /// unknown).
    pub fn from_query(query: Option<&str>) -> Self {
        let Some(q) = query else {
            return Self::Auto;
        };
        for pair in q.split('&') {
            match pair {
                "encoding=raw" => return Self::Raw,
                "encoding=png" => return Self::Png,
                _ => {}
            }
        }
        Self::Auto
    }

    fn use_png(self, rect: Rect) -> bool {
        match self {
            Self::Raw => false,
            Self::Png => true,
            Self::Auto => u64::from(rect.width) * u64::from(rect.height) >= AUTO_PNG_MIN_PIXELS,
        }
    }
}

/// Server→client control messages.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerText {
    /// First message: the protocol version, how many scanouts there are,
    /// whether input is taken.
    Hello {
        version: u32,
        scanouts: u32,
        input: bool,
    },
    /// A scanout's mode (width and height 0 when off).
    Mode {
        scanout: u32,
        width: u32,
        height: u32,
        enabled: bool,
    },
    /// The cursor's hot spot on `scanout`.
    CursorMove { scanout: u32, x: i32, y: i32 },
    /// The end of a batch: acknowledge with the same `seq`.
    Sync { seq: u64 },
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Text(String),
    Binary(Vec<u8>),
}

impl ServerText {
    pub fn to_outgoing(&self) -> Outgoing {
        // Serializing these plain structs cannot fail.
        Outgoing::Text(serde_json::to_string(self).unwrap_or_default())
    }
}

/// A binary message: header then payload.
pub fn binary_message(
    kind: u8,
    encoding: u8,
    scanout: u32,
    fields: [u32; 4],
    payload: &[u8],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER_LEN + payload.len());
    m.push(kind);
    m.push(encoding);
    m.extend_from_slice(&(scanout as u16).to_le_bytes());
    for f in fields {
        m.extend_from_slice(&f.to_le_bytes());
    }
    m.extend_from_slice(payload);
    m
}

/// The message for one update from the store.
pub fn encode_update(update: Update, policy: EncodingPolicy) -> Result<Outgoing, DisplayError> {
    Ok(match update {
        Update::Mode { scanout, mode } => {
            let (width, height) = mode.unwrap_or((0, 0));
            ServerText::Mode {
                scanout,
                width,
                height,
                enabled: mode.is_some(),
            }
            .to_outgoing()
        }
        Update::Pixels {
            scanout,
            rect,
            rgba,
        } => {
            let fields = [rect.x, rect.y, rect.width, rect.height];
            if policy.use_png(rect) {
                let png = png_from_rgba(rect.width, rect.height, &rgba)?;
                Outgoing::Binary(binary_message(
                    KIND_RECT,
                    ENCODING_PNG,
                    scanout,
                    fields,
                    &png,
                ))
            } else {
                Outgoing::Binary(binary_message(
                    KIND_RECT,
                    ENCODING_RAW,
                    scanout,
                    fields,
                    &rgba,
                ))
            }
        }
        Update::Cursor { scanout, image } => match image {
            Some(c) => Outgoing::Binary(binary_message(
                KIND_CURSOR,
                ENCODING_RAW,
                scanout,
                [c.hot_x, c.hot_y, c.width, c.height],
                &c.rgba,
            )),
            None => Outgoing::Binary(binary_message(
                KIND_CURSOR,
                ENCODING_RAW,
                scanout,
                [0; 4],
                &[],
            )),
        },
        Update::CursorMove { scanout, x, y } => {
            ServerText::CursorMove { scanout, x, y }.to_outgoing()
        }
    })
}

/// Client→server messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientMessage {
    Ack {
        seq: u64,
    },
    Input(InputEvent),
    /// Asks the guest to show `width` x `height` device pixels on
    /// `scanout` (each side within [`MIN_REQUEST_DIMENSION`] and
    /// [`MAX_REQUEST_DIMENSION`]; whether the scanout exists is the
    /// [`Display`]'s to say).
    Resize {
        scanout: u32,
        width: u32,
        height: u32,
    },
}

#[derive(serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Control {
    Ack {
        seq: u64,
    },
    Resize {
        scanout: u32,
        width: u32,
        height: u32,
    },
}

/// Errors in what a client sent.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("message too long ({0} bytes)")]
    TooLong(usize),
    #[error("not a viewer message")]
    Malformed(#[source] serde_json::Error),
    #[error("resize of display {scanout} to {width}x{height} is out of range")]
    BadResize {
        scanout: u32,
        width: u32,
        height: u32,
    },
}

/// Parses a client's text message.
pub fn parse_client(text: &str) -> Result<ClientMessage, ProtocolError> {
    if text.len() > MAX_CLIENT_MESSAGE {
        return Err(ProtocolError::TooLong(text.len()));
    }
    match serde_json::from_str(text) {
        Ok(Control::Ack { seq }) => return Ok(ClientMessage::Ack { seq }),
        Ok(Control::Resize {
            scanout,
            width,
            height,
        }) => {
            let ok = |v: u32| (MIN_REQUEST_DIMENSION..=MAX_REQUEST_DIMENSION).contains(&v);
            if !ok(width) || !ok(height) || scanout >= crate::store::MAX_SCANOUTS {
                return Err(ProtocolError::BadResize {
                    scanout,
                    width,
                    height,
                });
            }
            return Ok(ClientMessage::Resize {
                scanout,
                width,
                height,
            });
        }
        Err(_) => {}
    }
    serde_json::from_str(text)
        .map(ClientMessage::Input)
        .map_err(ProtocolError::Malformed)
}

/// One viewer's input, checked before it reaches the guest: key and
/// button codes in range, pointer positions on an enabled scanout and
/// inside it, wheel steps bounded, no repeated presses or releases of keys
/// this viewer does not hold. What the viewer still holds when it goes
/// away is released ([`InputFilter::release_all`]).
#[derive(Debug, Default)]
pub struct InputFilter {
    keys: BTreeSet<u16>,
    buttons: BTreeSet<u16>,
}

impl InputFilter {
    pub fn new() -> Self {
        Self::default()
    }

    /// The event to forward for `ev`, if any.
    pub fn filter(&mut self, ev: InputEvent, display: &Display) -> Option<InputEvent> {
        match ev {
            InputEvent::Key { code, pressed } => {
                if code == 0 || code > KEY_MAX || (BTN_MOUSE_FIRST..=BTN_MOUSE_LAST).contains(&code)
                {
                    return None;
                }
                let changed = if pressed {
                    self.keys.insert(code)
                } else {
                    self.keys.remove(&code)
                };
                changed.then_some(ev)
            }
            InputEvent::Button { code, pressed } => {
                if !(BTN_MOUSE_FIRST..=BTN_MOUSE_LAST).contains(&code) {
                    return None;
                }
                let changed = if pressed {
                    self.buttons.insert(code)
                } else {
                    self.buttons.remove(&code)
                };
                changed.then_some(ev)
            }
            InputEvent::PointerMove { scanout, x, y } => {
                let (w, h) = display.mode(scanout)?;
                Some(InputEvent::PointerMove {
                    scanout,
                    x: x.min(w - 1),
                    y: y.min(h - 1),
                })
            }
            InputEvent::Wheel { delta } => {
                let delta = delta.clamp(-MAX_WHEEL, MAX_WHEEL);
                (delta != 0).then_some(InputEvent::Wheel { delta })
            }
        }
    }

    /// Releases for everything still held.
    pub fn release_all(&mut self) -> Vec<InputEvent> {
        let keys = std::mem::take(&mut self.keys)
            .into_iter()
            .map(|code| InputEvent::Key {
                code,
                pressed: false,
            });
        let buttons =
            std::mem::take(&mut self.buttons)
                .into_iter()
                .map(|code| InputEvent::Button {
                    code,
                    pressed: false,
                });
        keys.chain(buttons).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::tests::decode_rgba;
    use crate::{CursorImage, ScanoutSink};

    #[test]
    fn encoding_policy_from_query() {
        assert_eq!(EncodingPolicy::from_query(None), EncodingPolicy::Auto);
        assert_eq!(
            EncodingPolicy::from_query(Some("encoding=raw")),
            EncodingPolicy::Raw
        );
        assert_eq!(
            EncodingPolicy::from_query(Some("a=b&encoding=png")),
            EncodingPolicy::Png
        );
        assert_eq!(
            EncodingPolicy::from_query(Some("encoding=gif")),
            EncodingPolicy::Auto
        );
    }

    fn pixels(rect: Rect) -> Update {
        Update::Pixels {
            scanout: 3,
            rect,
            rgba: (0..rect.width * rect.height * 4)
                .map(|i| i as u8 | 3)
                .collect(),
        }
    }

    fn header(m: &[u8]) -> (u8, u8, u16, [u32; 4]) {
        let f = |i: usize| u32::from_le_bytes([m[i], m[i + 1], m[i + 2], m[i + 3]]);
        (
            m[0],
            m[1],
            u16::from_le_bytes([m[2], m[3]]),
            [f(4), f(8), f(12), f(16)],
        )
    }

    #[test]
    fn small_rects_go_raw_and_large_ones_png_under_auto() {
        let small = Rect::new(1, 2, 3, 4);
        let Outgoing::Binary(m) = encode_update(pixels(small), EncodingPolicy::Auto).unwrap()
        else {
            panic!()
        };
        assert_eq!(header(&m), (KIND_RECT, ENCODING_RAW, 3, [1, 2, 3, 4]));
        let Update::Pixels { rgba, .. } = pixels(small) else {
            panic!()
        };
        assert_eq!(&m[HEADER_LEN..], &rgba[..]);

        let large = Rect::new(5, 6, 64, 70);
        let Outgoing::Binary(m) = encode_update(pixels(large), EncodingPolicy::Auto).unwrap()
        else {
            panic!()
        };
        assert_eq!(header(&m), (KIND_RECT, ENCODING_PNG, 3, [5, 6, 64, 70]));
        let (w, h, decoded) = decode_rgba(&m[HEADER_LEN..]);
        assert_eq!((w, h), (64, 70));
        let Update::Pixels { rgba, .. } = pixels(large) else {
            panic!()
        };
        let opaque: Vec<u8> = rgba
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect();
        assert_eq!(decoded, opaque);

        let Outgoing::Binary(m) = encode_update(pixels(small), EncodingPolicy::Png).unwrap() else {
            panic!()
        };
        assert_eq!(m[1], ENCODING_PNG);
        let Outgoing::Binary(m) = encode_update(pixels(large), EncodingPolicy::Raw).unwrap() else {
            panic!()
        };
        assert_eq!(m[1], ENCODING_RAW);
    }

    #[test]
    fn control_messages_are_json() {
        let mode = Update::Mode {
            scanout: 1,
            mode: Some((640, 480)),
        };
        assert_eq!(
            encode_update(mode, EncodingPolicy::Auto).unwrap(),
            Outgoing::Text(
                r#"{"type":"mode","scanout":1,"width":640,"height":480,"enabled":true}"#.into()
            )
        );
        let off = Update::Mode {
            scanout: 0,
            mode: None,
        };
        assert_eq!(
            encode_update(off, EncodingPolicy::Auto).unwrap(),
            Outgoing::Text(
                r#"{"type":"mode","scanout":0,"width":0,"height":0,"enabled":false}"#.into()
            )
        );
        let mv = Update::CursorMove {
            scanout: 0,
            x: -3,
            y: 7,
        };
        assert_eq!(
            encode_update(mv, EncodingPolicy::Auto).unwrap(),
            Outgoing::Text(r#"{"type":"cursor_move","scanout":0,"x":-3,"y":7}"#.into())
        );
        assert_eq!(
            ServerText::Sync { seq: 9 }.to_outgoing(),
            Outgoing::Text(r#"{"type":"sync","seq":9}"#.into())
        );
    }

    #[test]
    fn cursor_messages() {
        let c = CursorImage {
            width: 2,
            height: 1,
            hot_x: 1,
            hot_y: 0,
            rgba: vec![1, 2, 3, 4, 5, 6, 7, 8],
        };
        let up = Update::Cursor {
            scanout: 2,
            image: Some(c),
        };
        let Outgoing::Binary(m) = encode_update(up, EncodingPolicy::Png).unwrap() else {
            panic!()
        };
        assert_eq!(header(&m), (KIND_CURSOR, ENCODING_RAW, 2, [1, 0, 2, 1]));
        assert_eq!(&m[HEADER_LEN..], &[1, 2, 3, 4, 5, 6, 7, 8]);
        let hide = Update::Cursor {
            scanout: 2,
            image: None,
        };
        let Outgoing::Binary(m) = encode_update(hide, EncodingPolicy::Auto).unwrap() else {
            panic!()
        };
        assert_eq!(m.len(), HEADER_LEN);
        assert_eq!(header(&m), (KIND_CURSOR, ENCODING_RAW, 2, [0; 4]));
    }

    #[test]
    fn client_messages_parse() {
        assert_eq!(
            parse_client(r#"{"type":"ack","seq":4}"#).unwrap(),
            ClientMessage::Ack { seq: 4 }
        );
        assert_eq!(
            parse_client(r#"{"type":"key","code":30,"pressed":true}"#).unwrap(),
            ClientMessage::Input(InputEvent::Key {
                code: 30,
                pressed: true
            })
        );
        assert_eq!(
            parse_client(r#"{"type":"pointer_move","scanout":0,"x":5,"y":6}"#).unwrap(),
            ClientMessage::Input(InputEvent::PointerMove {
                scanout: 0,
                x: 5,
                y: 6
            })
        );
        for bad in [
            "",
            "{}",
            "[1]",
            r#"{"type":"key","code":70000,"pressed":true}"#,
            r#"{"type":"pointer_move","scanout":0,"x":-1,"y":6}"#,
            r#"{"type":"launch_missiles"}"#,
        ] {
            assert!(
                matches!(parse_client(bad), Err(ProtocolError::Malformed(_))),
                "{bad}"
            );
        }
        let long = format!(
            r#"{{"type":"ack","seq":1,"pad":"{}"}}"#,
            "x".repeat(MAX_CLIENT_MESSAGE)
        );
        assert!(matches!(
            parse_client(&long),
            Err(ProtocolError::TooLong(_))
        ));
    }

    #[test]
    fn resize_requests_parse_and_hostile_ones_do_not() {
        assert_eq!(
            parse_client(r#"{"type":"resize","scanout":1,"width":1918,"height":1002}"#).unwrap(),
            ClientMessage::Resize {
                scanout: 1,
                width: 1918,
                height: 1002
            }
        );
        assert_eq!(
            parse_client(r#"{"height":32,"width":8192,"scanout":15,"type":"resize"}"#).unwrap(),
            ClientMessage::Resize {
                scanout: 15,
                width: 8192,
                height: 32
            }
        );
        // Out of range: refused as such.
        for (scanout, width, height) in [
            (0u32, 31u32, 600u32),
            (0, 800, 0),
            (0, 8193, 600),
            (0, 800, 4294967295),
            (16, 800, 600),
            (4294967295, 800, 600),
        ] {
            let text = format!(
                r#"{{"type":"resize","scanout":{scanout},"width":{width},"height":{height}}}"#
            );
            assert!(
                matches!(parse_client(&text), Err(ProtocolError::BadResize { .. })),
                "{text}"
            );
        }
        // Not numbers a u32 holds, or missing: not a viewer message.
        for bad in [
            r#"{"type":"resize","scanout":0,"width":-800,"height":600}"#,
            r#"{"type":"resize","scanout":0,"width":800.5,"height":600}"#,
            r#"{"type":"resize","scanout":0,"width":1e3,"height":600}"#,
            r#"{"type":"resize","scanout":0,"width":4294967296,"height":600}"#,
            r#"{"type":"resize","scanout":0,"width":99999999999999999999999,"height":600}"#,
            r#"{"type":"resize","scanout":-1,"width":800,"height":600}"#,
            r#"{"type":"resize","scanout":0,"width":"800","height":600}"#,
            r#"{"type":"resize","scanout":0,"width":null,"height":600}"#,
            r#"{"type":"resize","scanout":0,"width":800}"#,
            r#"{"type":"resize"}"#,
            r#"{"type":"Resize","scanout":0,"width":800,"height":600}"#,
            r#"{"type":"resize","scanout":0,"width":[800],"height":600}"#,
        ] {
            assert!(
                matches!(parse_client(bad), Err(ProtocolError::Malformed(_))),
                "{bad}"
            );
        }
        let long = format!(
            r#"{{"type":"resize","scanout":0,"width":800,"height":600,"pad":"{}"}}"#,
            "x".repeat(MAX_CLIENT_MESSAGE)
        );
        assert!(matches!(
            parse_client(&long),
            Err(ProtocolError::TooLong(_))
        ));
    }

    #[test]
    fn input_is_checked_and_released() {
        let d = Display::new(2);
        d.set_mode(0, Some((100, 50)));
        let mut f = InputFilter::new();
        let key = |code, pressed| InputEvent::Key { code, pressed };
        let button = |code, pressed| InputEvent::Button { code, pressed };
        assert_eq!(f.filter(key(30, true), &d), Some(key(30, true)));
        assert_eq!(f.filter(key(30, true), &d), None, "already held");
        assert_eq!(f.filter(key(31, false), &d), None, "not held");
        assert_eq!(f.filter(key(0, true), &d), None);
        assert_eq!(f.filter(key(0x300, true), &d), None);
        assert_eq!(f.filter(key(0x110, true), &d), None, "a button as a key");
        assert_eq!(f.filter(button(0x110, true), &d), Some(button(0x110, true)));
        assert_eq!(f.filter(button(30, true), &d), None);
        let mv = |scanout, x, y| InputEvent::PointerMove { scanout, x, y };
        assert_eq!(f.filter(mv(0, 10, 20), &d), Some(mv(0, 10, 20)));
        assert_eq!(f.filter(mv(0, 1000, 1000), &d), Some(mv(0, 99, 49)));
        assert_eq!(f.filter(mv(1, 1, 1), &d), None, "scanout off");
        assert_eq!(f.filter(mv(7, 1, 1), &d), None, "no such scanout");
        assert_eq!(
            f.filter(InputEvent::Wheel { delta: -1000 }, &d),
            Some(InputEvent::Wheel { delta: -MAX_WHEEL })
        );
        assert_eq!(f.filter(InputEvent::Wheel { delta: 0 }, &d), None);
        assert_eq!(f.release_all(), vec![key(30, false), button(0x110, false)]);
        assert!(f.release_all().is_empty());
    }
}
