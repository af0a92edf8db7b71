//! The page offers only what the engine accepts: every end of the page's number inputs for sampling, and of its
//! steering slider, passes the engine's own checks (the ones the CLI and the JS API run), and a step past an end
//! that the engine refuses is not offered.

use personascope_model::SamplingParams;
use personascope_persona::steer::{check_alpha, MAX_ALPHA};

fn read(rel: &str) -> String {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../../");
    std::fs::read_to_string(format!("{p}{rel}")).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The value of attribute `attr` of the `<input>` with `id` in index.html.
fn attr(html: &str, id: &str, attr: &str) -> Option<f32> {
    let at = html.find(&format!("id=\"{id}\""))?;
    let start = html[..at].rfind("<input")?;
    let end = start + html[start..].find('>')?;
    let tag = &html[start..end];
    let key = format!(" {attr}=\"");
    let v = &tag[tag.find(&key)? + key.len()..];
    v[..v.find('"')?].parse().ok()
}

#[test]
fn the_sampling_inputs_stay_inside_what_the_engine_accepts() {
    let html = read("web/index.html");
    let check = |id: &str, set: &dyn Fn(&mut SamplingParams, f32)| {
        for end in ["min", "max"] {
            if let Some(v) = attr(&html, id, end) {
                let mut p = SamplingParams::default();
                set(&mut p, v);
                assert!(p.validate().is_ok(), "#{id} {end}={v} is offered by the page but refused: {:?}", p.validate());
            }
        }
    };
    check("temperature", &|p, v| p.temperature = v);
    // top_p = 0 was offered (min="0") and refused by the engine.
    check("top-p", &|p, v| p.top_p = v);
    check("repetition-penalty", &|p, v| p.repetition_penalty = v);
    assert!(attr(&html, "top-p", "min").is_some_and(|v| v > 0.0), "top-p needs a positive min");
    assert!(attr(&html, "max-tokens", "min").is_some_and(|v| v >= 1.0));
}

#[test]
fn the_steering_slider_stays_inside_the_accepted_alphas() {
    let js = read("web/app.js");
    let at = js.find("'data-testid': 'steer-slider'").expect("the steering slider");
    let block = &js[js[..at].rfind("h('input'").expect("slider element")..at];
    let num = |key: &str| -> f32 {
        let v = &block[block.find(key).unwrap_or_else(|| panic!("{key} in {block}")) + key.len()..];
        v[..v.find(',').expect("comma")].trim().parse().expect("number")
    };
    for a in [num("min:"), num("max:")] {
        assert!(check_alpha(a).is_ok() && a.abs() <= MAX_ALPHA, "slider end {a}");
    }
}
