//! Builds the default guest image and prints where it is:
//! `cargo run -p pv-image --example build-image [-- --test NAME SCRIPT_FILE]...`.

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let mut builder = pv_image::ImageBuilder::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next(), args.next()) {
            ("--test", Some(name), Some(file)) => {
                builder = builder.test_script(&name, std::fs::read(file)?);
            }
            _ => return Err("usage: build-image [--test NAME SCRIPT_FILE]...".into()),
        }
    }
    let image = builder.build()?;
    println!("kernel:  {}", image.kernel.display());
    println!("initrd:  {}", image.initrd.display());
    println!("release: {}", image.kernel_version);
    println!("modules: {}", image.modules.join(" "));
    for (name, version) in &image.packages {
        println!("package: {name} {version}");
    }
    println!("took:    {:.2?}", start.elapsed());
    Ok(())
}
