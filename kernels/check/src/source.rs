//! What a kernel source defines, read from its text: its kernels and its shared constants.

use std::collections::HashMap;

/// `name → value text` of the shared-constants block of a kernel source: the `#define EMILIO_…`
/// lines between `---- BEGIN EMILIO SHARED CONSTANTS` and `---- END EMILIO SHARED CONSTANTS`.
///
/// Panics on a malformed block (missing markers, a name defined twice, not one value).
pub fn defines(source: &str) -> HashMap<&str, &str> {
    let begin = source
        .find("---- BEGIN EMILIO SHARED CONSTANTS")
        .expect("shared-constants block");
    let end = source
        .find("---- END EMILIO SHARED CONSTANTS")
        .expect("end of the shared-constants block");
    let mut out = HashMap::new();
    for line in source[begin..end].lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("#define") {
            continue;
        }
        let name = words.next().expect("a #define names something");
        let value = words
            .next()
            .unwrap_or_else(|| panic!("{name} has no value"));
        assert!(words.next().is_none(), "{name}: one value per #define");
        assert!(out.insert(name, value).is_none(), "{name} defined twice");
    }
    out
}

/// The kernels `source` defines, in the order it defines them: every `kernel void NAME(`
/// (Metal) and `__global__ void NAME(` (CUDA), with the function-like macros that instantiate
/// them per dtype (`EMILIO_GEMV(f32_f16, …)` over `kernel void emilio_gemv_##SUFFIX(`) expanded.
///
/// The expansion is textual and covers what the sources use: a macro's parameters replaced by
/// the arguments of an invocation that starts a line, and `##` pasting. It is checked against
/// nvcc's own PTX, whose `.entry` names must be exactly these (`kernels/check/tests/cuda_source.rs`).
pub fn kernels(source: &str) -> Vec<String> {
    let mut macros: HashMap<String, (Vec<String>, String)> = HashMap::new();
    let mut names = Vec::new();
    for line in logical_lines(source) {
        let line = strip_comment(&line);
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("#define ") {
            let name_end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
            let (name, after) = rest.split_at(name_end);
            if let Some(after) = after.strip_prefix('(') {
                let close = after.find(')').expect("a macro's parameter list ends");
                let params = after[..close]
                    .split(',')
                    .map(|p| p.trim().to_string())
                    .collect();
                macros.insert(name.to_string(), (params, after[close + 1..].to_string()));
            }
            continue;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        let name_end = trimmed
            .find(|c: char| !is_ident(c))
            .unwrap_or(trimmed.len());
        let expanded = match macros.get(&trimmed[..name_end]) {
            Some((params, body)) if trimmed[name_end..].starts_with('(') => {
                let args = invocation_args(&trimmed[name_end + 1..]);
                assert_eq!(
                    args.len(),
                    params.len(),
                    "{}: arguments of `{trimmed}`",
                    &trimmed[..name_end]
                );
                substitute(body, params, &args)
            }
            _ => line.to_string(),
        };
        names.extend(defined_kernels(&expanded));
    }
    names
}

/// The source's lines with backslash continuations joined.
fn logical_lines(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in source.lines() {
        match line.strip_suffix('\\') {
            Some(head) => {
                current += head;
                current.push(' ');
            }
            None => {
                current += line;
                out.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// `line` up to a `//` comment.
fn strip_comment(line: &str) -> &str {
    line.find("//").map_or(line, |at| &line[..at])
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The comma-separated arguments of an invocation, from after its `(` to the matching `)`.
fn invocation_args(rest: &str) -> Vec<String> {
    let mut args = vec![String::new()];
    let mut depth = 0;
    for c in rest.chars() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => return args.into_iter().map(|a| a.trim().into()).collect(),
            ')' => depth -= 1,
            ',' if depth == 0 => {
                args.push(String::new());
                continue;
            }
            _ => {}
        }
        args.last_mut().expect("one argument at least").push(c);
    }
    panic!("unterminated macro invocation `({rest}`")
}

/// `body` with every identifier named in `params` replaced by its argument, then `##` pasted.
fn substitute(body: &str, params: &[String], args: &[String]) -> String {
    let mut out = String::new();
    let mut ident = String::new();
    let flush = |ident: &mut String, out: &mut String| {
        match params.iter().position(|p| p == ident) {
            Some(i) => *out += &args[i],
            None => *out += ident,
        }
        ident.clear();
    };
    for c in body.chars() {
        if is_ident(c) {
            ident.push(c);
        } else {
            flush(&mut ident, &mut out);
            out.push(c);
        }
    }
    flush(&mut ident, &mut out);
    // `a ## b` and `a##b` both paste.
    out.replace(" ## ", "").replace("##", "")
}

/// The names of the kernels a piece of (expanded) source defines.
fn defined_kernels(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    for keyword in ["kernel void ", "__global__ void "] {
        for (at, _) in code.match_indices(keyword) {
            let before = code[..at].chars().next_back();
            if before.is_some_and(is_ident) {
                continue;
            }
            let rest = code[at + keyword.len()..].trim_start();
            let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
            if rest[end..].trim_start().starts_with('(') {
                names.push(rest[..end].to_string());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use emilio_kernels::{Backend, CUDA_SOURCE, METAL_SOURCE};

    use super::*;

    /// kernels/emilio.cu computes the same exp and ln and is driven by the same plans: its
    /// constants block must be kernels/emilio.metal's, name for name and digit for digit (so
    /// every check emilio-op makes of the Metal block holds for it too).
    #[test]
    fn cuda_source_shares_every_constant() {
        let cuda = defines(CUDA_SOURCE);
        let metal = defines(METAL_SOURCE);
        let mut names: Vec<_> = metal.keys().chain(cuda.keys()).collect();
        names.sort();
        names.dedup();
        for name in names {
            assert_eq!(
                cuda.get(name),
                metal.get(name),
                "{name}: kernels/emilio.cu and kernels/emilio.metal disagree"
            );
        }
    }

    #[test]
    fn both_sources_define_the_same_kernels_once() {
        let metal = kernels(METAL_SOURCE);
        let cuda = kernels(CUDA_SOURCE);
        assert!(
            metal.contains(&"emilio_gemv_bf16_f16".to_string()),
            "{metal:?}"
        );
        assert_eq!(metal, cuda, "the kernels of emilio.metal and emilio.cu");
        for backend in Backend::ALL {
            let mut names = kernels(backend.source());
            let count = names.len();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), count, "{backend:?}: a kernel defined twice");
        }
    }

    #[test]
    fn macro_instantiations_are_expanded() {
        let source = "\
#define TWICE(SUFFIX, T) \\
    kernel void k_a_##SUFFIX(T x) {} \\
    kernel void k_b_ ## SUFFIX(T x) {}
// kernel void commented_out(
TWICE(f32, float)
TWICE(f16, half) // a comment
kernel void plain(int x) {}
extern \"C\" __global__ void cuda_one(int x) {}
void not_a_kernel(int x) {}
";
        assert_eq!(
            kernels(source),
            ["k_a_f32", "k_b_f32", "k_a_f16", "k_b_f16", "plain", "cuda_one"]
        );
    }
}
