//! Prints a fresh token key (32 random bytes from the OS, base64url) to put
//! in `STATETEMPLATE_KEYS`, so tokens survive restarts. To rotate, put the
//! new key first and keep the old one as `OLD@UNIX_SECONDS` until then.
//!
//! Run: `cargo run --example keygen`

fn main() -> Result<(), statetemplate::Error> {
    let key = statetemplate::token::Key::generate()?;
    println!("{}", key.encode());
    eprintln!(
        "key id {:08x}; e.g. export STATETEMPLATE_KEYS={}",
        key.id(),
        key.encode()
    );
    Ok(())
}
