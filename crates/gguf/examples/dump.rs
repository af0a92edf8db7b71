//! Prints a GGUF file's metadata (long arrays shortened) and tensor table: `cargo run --example dump -- FILE`.
use personascope_gguf::{Gguf, Value};

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: dump FILE.gguf");
        std::process::exit(2);
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(1);
        }
    };
    let g = match Gguf::parse(&bytes) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(1);
        }
    };
    println!("version {} alignment {} data at {}", g.version, g.alignment, g.data_offset);
    for (k, v) in g.metadata() {
        match v {
            Value::Array(a) => {
                println!("{k}: [{}; {}] {:?}", a.elem_type().name(), a.len(), a.values().take(5).collect::<Vec<_>>())
            }
            Value::String(s) if s.len() > 200 => {
                println!("{k}: {:?}... ({} chars)", &s[..200], s.len())
            }
            _ => println!("{k}: {v:?}"),
        }
    }
    for t in g.tensors() {
        println!("{} {:?} {}", t.name, t.dims, t.ty);
    }
}
