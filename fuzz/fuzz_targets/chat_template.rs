//! Fuzzes chat templates: any source compiles or is refused, and a compiled one renders a conversation under its
//! fuel and output limits or fails with an error; neither hangs. (Known gap: a list doubled more than 32 times,
//! `l = l + l`, is materialized by minijinja without a charge and can still exhaust memory.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use personascope_model::chat::{ChatTemplate, Message};

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    let Ok(t) = ChatTemplate::from_source(src, "<s>", "</s>") else { return };
    let _ = t.probe();
    let _ = t.render(&[Message::system("s"), Message::user("u"), Message::assistant("a")], true);
});
