//! Fuzzes trait-definition parsing: any text gives a definition that validates, or an error naming a field or a
//! position; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(def) = personascope_persona::parse(text) {
        def.validate().expect("a parsed definition validates");
        for pair in 0..def.instructions.len() {
            assert!(def.system_prompt(pair, true).is_some() && def.system_prompt(pair, false).is_some());
        }
    }
});
