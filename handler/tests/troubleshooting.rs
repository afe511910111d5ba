//! README.md's troubleshooting section lists every warning and error the
//! daemon logs: each `warn!`/`error!` message in handler/src must appear
//! there (its text up to the first `{` placeholder).

use std::path::Path;

/// The first string literal of every `warn!(`/`error!(` call in `src`
/// (line continuations joined), with the file it is in.
fn messages(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    for mac in ["warn!(", "error!("] {
        let mut rest = src;
        while let Some(i) = rest.find(mac) {
            rest = &rest[i + mac.len()..];
            // The format string: the first literal before the call's `;`.
            let call = &rest[..rest.find(");").unwrap_or(rest.len())];
            let Some(q) = call.find('"') else { continue };
            let mut lit = String::new();
            let mut chars = call[q + 1..].chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some('\n') => {
                            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                                chars.next();
                            }
                        }
                        Some(other) => lit.push(other),
                        None => break,
                    },
                    '"' => break,
                    c => lit.push(c),
                }
            }
            out.push(lit);
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs")
            && !p.file_name().unwrap().to_string_lossy().contains("tests")
        {
            out.push(p);
        }
    }
}

#[test]
fn every_logged_warning_and_error_is_in_the_readme() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("../README.md")).unwrap();
    let section = &readme[readme
        .find("## Troubleshooting")
        .expect("README has Troubleshooting")..];
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut missing = Vec::new();
    let mut checked = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        // Unit-test modules log too; only the daemon's own messages count.
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        for m in messages(text) {
            let key = m
                .split('{')
                .next()
                .unwrap_or("")
                .trim()
                .trim_end_matches(':');
            if key.len() < 8 {
                continue;
            }
            checked += 1;
            if !section.contains(key) {
                missing.push(format!("{}: {key:?}", f.display()));
            }
        }
    }
    assert!(
        checked > 50,
        "found only {checked} messages: is the scan broken?"
    );
    assert!(
        missing.is_empty(),
        "not in README.md's Troubleshooting:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_scan_finds_literals_with_fields_and_continuations() {
    let src = "warn!(lu = %id, error = %e, \"lock request refused\");\n\
               error!(\n    x = 1,\n    \"long \\\n     message {e}\"\n);";
    assert_eq!(
        messages(src),
        vec!["lock request refused", "long message {e}"]
    );
}
