// Links libdlm_lt, the variant of libdlm without its own AST thread: the
// daemon polls the lockspace fd in its event loop and calls dlm_dispatch(),
// so ASTs run on the caller's thread. Debian's libdlm-dev ships it.
fn main() {
    println!("cargo:rustc-link-lib=dylib=dlm_lt");
    println!("cargo:rerun-if-changed=build.rs");
}
