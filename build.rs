//! With feature `isal`: compiles the small C face over ISA-L's inflate and links the system's
//! libisal (Debian: `apt-get install libisal-dev`). Without it there is nothing to build.

fn main() {
    println!("cargo:rerun-if-changed=src/gzip/isal_shim.c");
    #[cfg(feature = "isal")]
    {
        let mut build = cc::Build::new();
        build.file("src/gzip/isal_shim.c").opt_level(2).warnings(true);
        if let Err(e) = build.try_compile("mimic_eye_isal_shim") {
            panic!(
                "feature `isal` needs ISA-L's header and library (Debian/Ubuntu: apt-get install \
                 libisal-dev; elsewhere: https://github.com/intel/isa-l): {e}"
            );
        }
        println!("cargo:rustc-link-lib=isal");
    }
}
