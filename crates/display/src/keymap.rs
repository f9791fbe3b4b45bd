//! Physical key names (the W3C UI Events `code` values: what the browser's
//! `KeyboardEvent.code` says, and what winit's `KeyCode` variants are
//! named) to Linux input key codes (`linux/input-event-codes.h`). The web
//! viewer's page gets this table as JSON; the window uses it too.

/// (W3C code, Linux key code), for a US-layout PC keyboard.
pub const KEYMAP: &[(&str, u16)] = &[
    ("Escape", 1),
    ("Digit1", 2),
    ("Digit2", 3),
    ("Digit3", 4),
    ("Digit4", 5),
    ("Digit5", 6),
    ("Digit6", 7),
    ("Digit7", 8),
    ("Digit8", 9),
    ("Digit9", 10),
    ("Digit0", 11),
    ("Minus", 12),
    ("Equal", 13),
    ("Backspace", 14),
    ("Tab", 15),
    ("KeyQ", 16),
    ("KeyW", 17),
    ("KeyE", 18),
    ("KeyR", 19),
    ("KeyT", 20),
    ("KeyY", 21),
    ("KeyU", 22),
    ("KeyI", 23),
    ("KeyO", 24),
    ("KeyP", 25),
    ("BracketLeft", 26),
    ("BracketRight", 27),
    ("Enter", 28),
    ("ControlLeft", 29),
    ("KeyA", 30),
    ("KeyS", 31),
    ("KeyD", 32),
    ("KeyF", 33),
    ("KeyG", 34),
    ("KeyH", 35),
    ("KeyJ", 36),
    ("KeyK", 37),
    ("KeyL", 38),
    ("Semicolon", 39),
    ("Quote", 40),
    ("Backquote", 41),
    ("ShiftLeft", 42),
    ("Backslash", 43),
    ("KeyZ", 44),
    ("KeyX", 45),
    ("KeyC", 46),
    ("KeyV", 47),
    ("KeyB", 48),
    ("KeyN", 49),
    ("KeyM", 50),
    ("Comma", 51),
    ("Period", 52),
    ("Slash", 53),
    ("ShiftRight", 54),
    ("NumpadMultiply", 55),
    ("AltLeft", 56),
    ("Space", 57),
    ("CapsLock", 58),
    ("F1", 59),
    ("F2", 60),
    ("F3", 61),
    ("F4", 62),
    ("F5", 63),
    ("F6", 64),
    ("F7", 65),
    ("F8", 66),
    ("F9", 67),
    ("F10", 68),
    ("NumLock", 69),
    ("ScrollLock", 70),
    ("Numpad7", 71),
    ("Numpad8", 72),
    ("Numpad9", 73),
    ("NumpadSubtract", 74),
    ("Numpad4", 75),
    ("Numpad5", 76),
    ("Numpad6", 77),
    ("NumpadAdd", 78),
    ("Numpad1", 79),
    ("Numpad2", 80),
    ("Numpad3", 81),
    ("Numpad0", 82),
    ("NumpadDecimal", 83),
    ("IntlBackslash", 86),
    ("F11", 87),
    ("F12", 88),
    ("IntlRo", 89),
    ("NumpadEnter", 96),
    ("ControlRight", 97),
    ("NumpadDivide", 98),
    ("PrintScreen", 99),
    ("AltRight", 100),
    ("Home", 102),
    ("ArrowUp", 103),
    ("PageUp", 104),
    ("ArrowLeft", 105),
    ("ArrowRight", 106),
    ("End", 107),
    ("ArrowDown", 108),
    ("PageDown", 109),
    ("Insert", 110),
    ("Delete", 111),
    ("AudioVolumeMute", 113),
    ("AudioVolumeDown", 114),
    ("AudioVolumeUp", 115),
    ("NumpadEqual", 117),
    ("Pause", 119),
    ("NumpadComma", 121),
    ("IntlYen", 124),
    ("MetaLeft", 125),
    ("MetaRight", 126),
    ("ContextMenu", 127),
    ("F13", 183),
    ("F14", 184),
    ("F15", 185),
    ("F16", 186),
    ("F17", 187),
    ("F18", 188),
    ("F19", 189),
    ("F20", 190),
    ("F21", 191),
    ("F22", 192),
    ("F23", 193),
    ("F24", 194),
];

/// The Linux key code of a W3C `code` name.
pub fn linux_key_code(code: &str) -> Option<u16> {
    KEYMAP
        .iter()
        .find(|(name, _)| *name == code)
        .map(|&(_, c)| c)
}

/// The table as a JSON object (`{"KeyA":30,...}`), for the page.
pub fn keymap_json() -> String {
    let map: serde_json::Map<String, serde_json::Value> = KEYMAP
        .iter()
        .map(|&(name, code)| (name.to_owned(), code.into()))
        .collect();
    serde_json::Value::Object(map).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_keys() {
        for (name, code) in [
            ("KeyA", 30),
            ("KeyZ", 44),
            ("Digit0", 11),
            ("Enter", 28),
            ("Backspace", 14),
            ("Space", 57),
            ("Escape", 1),
            ("Tab", 15),
            ("ArrowUp", 103),
            ("ArrowDown", 108),
            ("ArrowLeft", 105),
            ("ArrowRight", 106),
            ("ShiftLeft", 42),
            ("ControlLeft", 29),
            ("AltLeft", 56),
            ("Slash", 53),
            ("Period", 52),
        ] {
            assert_eq!(linux_key_code(name), Some(code), "{name}");
        }
        assert_eq!(linux_key_code("Fn"), None);
    }

    #[test]
    fn names_and_codes_are_unique() {
        let mut names: Vec<_> = KEYMAP.iter().map(|k| k.0).collect();
        let mut codes: Vec<_> = KEYMAP.iter().map(|k| k.1).collect();
        names.sort();
        names.dedup();
        codes.sort();
        codes.dedup();
        assert_eq!(names.len(), KEYMAP.len());
        assert_eq!(codes.len(), KEYMAP.len());
        let json: serde_json::Value = serde_json::from_str(&keymap_json()).unwrap();
        assert_eq!(json["KeyA"], 30);
        assert_eq!(json.as_object().unwrap().len(), KEYMAP.len());
    }
}
