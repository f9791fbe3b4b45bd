//! Keyboard and mouse from the window system to the guest's codes: winit's
//! physical [`KeyCode`]s to Linux key codes, mouse buttons to `BTN_*`
//! codes, and wheel motion to whole wheel steps.
//!
//! Keys are mapped by physical position, like the web viewer does: winit
//! names its `KeyCode` variants after the W3C UI Events `code` values, so
//! each variant maps to its W3C name here and the Linux code comes from the
//! shared table in [`crate::keymap`]. (The one difference: winit calls the
//! Windows/Command keys `SuperLeft`/`SuperRight` where W3C now says
//! `MetaLeft`/`MetaRight`.)

use winit::event::{MouseButton, MouseScrollDelta};
use winit::keyboard::KeyCode;

use crate::keymap::linux_key_code;

/// Linux button codes (`linux/input-event-codes.h`).
pub const BTN_LEFT: u16 = 0x110;
pub const BTN_RIGHT: u16 = 0x111;
pub const BTN_MIDDLE: u16 = 0x112;
pub const BTN_SIDE: u16 = 0x113;
pub const BTN_EXTRA: u16 = 0x114;

/// Pixels of a smooth (touchpad) scroll that make one wheel step.
pub const PIXELS_PER_WHEEL_STEP: f64 = 40.0;

/// Every winit key the guest gets, with its W3C `code` name.
pub const WINIT_KEYS: &[(KeyCode, &str)] = &[
    (KeyCode::Escape, "Escape"),
    (KeyCode::Digit1, "Digit1"),
    (KeyCode::Digit2, "Digit2"),
    (KeyCode::Digit3, "Digit3"),
    (KeyCode::Digit4, "Digit4"),
    (KeyCode::Digit5, "Digit5"),
    (KeyCode::Digit6, "Digit6"),
    (KeyCode::Digit7, "Digit7"),
    (KeyCode::Digit8, "Digit8"),
    (KeyCode::Digit9, "Digit9"),
    (KeyCode::Digit0, "Digit0"),
    (KeyCode::Minus, "Minus"),
    (KeyCode::Equal, "Equal"),
    (KeyCode::Backspace, "Backspace"),
    (KeyCode::Tab, "Tab"),
    (KeyCode::KeyQ, "KeyQ"),
    (KeyCode::KeyW, "KeyW"),
    (KeyCode::KeyE, "KeyE"),
    (KeyCode::KeyR, "KeyR"),
    (KeyCode::KeyT, "KeyT"),
    (KeyCode::KeyY, "KeyY"),
    (KeyCode::KeyU, "KeyU"),
    (KeyCode::KeyI, "KeyI"),
    (KeyCode::KeyO, "KeyO"),
    (KeyCode::KeyP, "KeyP"),
    (KeyCode::BracketLeft, "BracketLeft"),
    (KeyCode::BracketRight, "BracketRight"),
    (KeyCode::Enter, "Enter"),
    (KeyCode::ControlLeft, "ControlLeft"),
    (KeyCode::KeyA, "KeyA"),
    (KeyCode::KeyS, "KeyS"),
    (KeyCode::KeyD, "KeyD"),
    (KeyCode::KeyF, "KeyF"),
    (KeyCode::KeyG, "KeyG"),
    (KeyCode::KeyH, "KeyH"),
    (KeyCode::KeyJ, "KeyJ"),
    (KeyCode::KeyK, "KeyK"),
    (KeyCode::KeyL, "KeyL"),
    (KeyCode::Semicolon, "Semicolon"),
    (KeyCode::Quote, "Quote"),
    (KeyCode::Backquote, "Backquote"),
    (KeyCode::ShiftLeft, "ShiftLeft"),
    (KeyCode::Backslash, "Backslash"),
    (KeyCode::KeyZ, "KeyZ"),
    (KeyCode::KeyX, "KeyX"),
    (KeyCode::KeyC, "KeyC"),
    (KeyCode::KeyV, "KeyV"),
    (KeyCode::KeyB, "KeyB"),
    (KeyCode::KeyN, "KeyN"),
    (KeyCode::KeyM, "KeyM"),
    (KeyCode::Comma, "Comma"),
    (KeyCode::Period, "Period"),
    (KeyCode::Slash, "Slash"),
    (KeyCode::ShiftRight, "ShiftRight"),
    (KeyCode::NumpadMultiply, "NumpadMultiply"),
    (KeyCode::AltLeft, "AltLeft"),
    (KeyCode::Space, "Space"),
    (KeyCode::CapsLock, "CapsLock"),
    (KeyCode::F1, "F1"),
    (KeyCode::F2, "F2"),
    (KeyCode::F3, "F3"),
    (KeyCode::F4, "F4"),
    (KeyCode::F5, "F5"),
    (KeyCode::F6, "F6"),
    (KeyCode::F7, "F7"),
    (KeyCode::F8, "F8"),
    (KeyCode::F9, "F9"),
    (KeyCode::F10, "F10"),
    (KeyCode::NumLock, "NumLock"),
    (KeyCode::ScrollLock, "ScrollLock"),
    (KeyCode::Numpad7, "Numpad7"),
    (KeyCode::Numpad8, "Numpad8"),
    (KeyCode::Numpad9, "Numpad9"),
    (KeyCode::NumpadSubtract, "NumpadSubtract"),
    (KeyCode::Numpad4, "Numpad4"),
    (KeyCode::Numpad5, "Numpad5"),
    (KeyCode::Numpad6, "Numpad6"),
    (KeyCode::NumpadAdd, "NumpadAdd"),
    (KeyCode::Numpad1, "Numpad1"),
    (KeyCode::Numpad2, "Numpad2"),
    (KeyCode::Numpad3, "Numpad3"),
    (KeyCode::Numpad0, "Numpad0"),
    (KeyCode::NumpadDecimal, "NumpadDecimal"),
    (KeyCode::IntlBackslash, "IntlBackslash"),
    (KeyCode::F11, "F11"),
    (KeyCode::F12, "F12"),
    (KeyCode::IntlRo, "IntlRo"),
    (KeyCode::NumpadEnter, "NumpadEnter"),
    (KeyCode::ControlRight, "ControlRight"),
    (KeyCode::NumpadDivide, "NumpadDivide"),
    (KeyCode::PrintScreen, "PrintScreen"),
    (KeyCode::AltRight, "AltRight"),
    (KeyCode::Home, "Home"),
    (KeyCode::ArrowUp, "ArrowUp"),
    (KeyCode::PageUp, "PageUp"),
    (KeyCode::ArrowLeft, "ArrowLeft"),
    (KeyCode::ArrowRight, "ArrowRight"),
    (KeyCode::End, "End"),
    (KeyCode::ArrowDown, "ArrowDown"),
    (KeyCode::PageDown, "PageDown"),
    (KeyCode::Insert, "Insert"),
    (KeyCode::Delete, "Delete"),
    (KeyCode::AudioVolumeMute, "AudioVolumeMute"),
    (KeyCode::AudioVolumeDown, "AudioVolumeDown"),
    (KeyCode::AudioVolumeUp, "AudioVolumeUp"),
    (KeyCode::NumpadEqual, "NumpadEqual"),
    (KeyCode::Pause, "Pause"),
    (KeyCode::NumpadComma, "NumpadComma"),
    (KeyCode::IntlYen, "IntlYen"),
    (KeyCode::SuperLeft, "MetaLeft"),
    (KeyCode::SuperRight, "MetaRight"),
    (KeyCode::ContextMenu, "ContextMenu"),
    (KeyCode::F13, "F13"),
    (KeyCode::F14, "F14"),
    (KeyCode::F15, "F15"),
    (KeyCode::F16, "F16"),
    (KeyCode::F17, "F17"),
    (KeyCode::F18, "F18"),
    (KeyCode::F19, "F19"),
    (KeyCode::F20, "F20"),
    (KeyCode::F21, "F21"),
    (KeyCode::F22, "F22"),
    (KeyCode::F23, "F23"),
    (KeyCode::F24, "F24"),
];

/// The W3C `code` name of a winit key (None: the guest has no such key).
pub fn w3c_name(code: KeyCode) -> Option<&'static str> {
    WINIT_KEYS
        .iter()
        .find(|(k, _)| *k == code)
        .map(|&(_, name)| name)
}

/// The Linux key code of a winit key.
pub fn linux_key(code: KeyCode) -> Option<u16> {
    w3c_name(code).and_then(linux_key_code)
}

/// The Linux code of a mouse button (left, right, middle, back and
/// forward; others have none).
pub fn linux_button(button: MouseButton) -> Option<u16> {
    match button {
        MouseButton::Left => Some(BTN_LEFT),
        MouseButton::Right => Some(BTN_RIGHT),
        MouseButton::Middle => Some(BTN_MIDDLE),
        MouseButton::Back => Some(BTN_SIDE),
        MouseButton::Forward => Some(BTN_EXTRA),
        MouseButton::Other(_) => None,
    }
}

/// Turns wheel motion into whole steps (positive: away from the user),
/// keeping the fractions of smooth scrolling until they add up to a step.
#[derive(Debug, Default)]
pub struct Wheel {
    pending: f64,
}

impl Wheel {
    /// The whole steps `delta` completes (0 while they are still partial).
    pub fn steps(&mut self, delta: MouseScrollDelta) -> i32 {
        // winit: positive y moves the content down, i.e. the wheel turned
        // away from the user.
        let lines = match delta {
            MouseScrollDelta::LineDelta(_, y) => f64::from(y),
            MouseScrollDelta::PixelDelta(p) => p.y / PIXELS_PER_WHEEL_STEP,
        };
        if !lines.is_finite() {
            return 0;
        }
        self.pending = (self.pending + lines).clamp(-1e6, 1e6);
        let whole = self.pending.trunc();
        self.pending -= whole;
        whole as i32
    }

    /// Forgets partial steps (the pointer left the window).
    pub fn reset(&mut self) {
        self.pending = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keymap::KEYMAP;
    use winit::dpi::PhysicalPosition;

    #[test]
    fn common_keys() {
        for (key, code) in [
            (KeyCode::KeyA, 30),
            (KeyCode::KeyZ, 44),
            (KeyCode::Digit1, 2),
            (KeyCode::Digit0, 11),
            (KeyCode::Enter, 28),
            (KeyCode::Escape, 1),
            (KeyCode::Backspace, 14),
            (KeyCode::Tab, 15),
            (KeyCode::Space, 57),
            (KeyCode::ShiftLeft, 42),
            (KeyCode::ShiftRight, 54),
            (KeyCode::ControlLeft, 29),
            (KeyCode::ControlRight, 97),
            (KeyCode::AltLeft, 56),
            (KeyCode::AltRight, 100),
            (KeyCode::SuperLeft, 125),
            (KeyCode::SuperRight, 126),
            (KeyCode::ArrowUp, 103),
            (KeyCode::ArrowDown, 108),
            (KeyCode::ArrowLeft, 105),
            (KeyCode::ArrowRight, 106),
            (KeyCode::F1, 59),
            (KeyCode::F12, 88),
            (KeyCode::NumpadEnter, 96),
            (KeyCode::Delete, 111),
        ] {
            assert_eq!(linux_key(key), Some(code), "{key:?}");
        }
        assert_eq!(linux_key(KeyCode::Fn), None);
        assert_eq!(linux_key(KeyCode::F35), None);
    }

    #[test]
    fn every_shared_key_has_a_winit_key_of_that_name() {
        // The table covers the shared keymap exactly, and each winit
        // variant is the one named like the W3C code (Super/Meta aside).
        assert_eq!(WINIT_KEYS.len(), KEYMAP.len());
        for &(name, code) in KEYMAP {
            let Some(&(key, _)) = WINIT_KEYS.iter().find(|(_, n)| *n == name) else {
                panic!("{name} has no winit key");
            };
            assert_eq!(linux_key(key), Some(code), "{name}");
            let winit_name = format!("{key:?}").replace("Super", "Meta");
            assert_eq!(winit_name, name);
        }
        let mut keys: Vec<String> = WINIT_KEYS.iter().map(|(k, _)| format!("{k:?}")).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), WINIT_KEYS.len(), "a winit key listed twice");
    }

    #[test]
    fn buttons() {
        assert_eq!(linux_button(MouseButton::Left), Some(0x110));
        assert_eq!(linux_button(MouseButton::Right), Some(0x111));
        assert_eq!(linux_button(MouseButton::Middle), Some(0x112));
        assert_eq!(linux_button(MouseButton::Back), Some(0x113));
        assert_eq!(linux_button(MouseButton::Forward), Some(0x114));
        assert_eq!(linux_button(MouseButton::Other(9)), None);
    }

    #[test]
    fn wheel_lines_and_pixels() {
        let mut w = Wheel::default();
        assert_eq!(w.steps(MouseScrollDelta::LineDelta(0.0, 1.0)), 1);
        assert_eq!(w.steps(MouseScrollDelta::LineDelta(0.0, -3.0)), -3);
        let px = |y| MouseScrollDelta::PixelDelta(PhysicalPosition::new(0.0, y));
        assert_eq!(w.steps(px(15.0)), 0);
        assert_eq!(w.steps(px(15.0)), 0);
        assert_eq!(w.steps(px(15.0)), 1, "45 px: one step, 5 px kept");
        assert_eq!(w.steps(px(-45.0)), -1);
        w.reset();
        assert_eq!(w.steps(px(20.0)), 0);
        assert_eq!(w.steps(px(f64::NAN)), 0, "ignored");
        assert_eq!(w.steps(px(20.0)), 1);
        assert_eq!(w.steps(MouseScrollDelta::LineDelta(0.0, f32::INFINITY)), 0);
    }
}
