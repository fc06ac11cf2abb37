//! On Windows, a message table resource in `vitals-agent.exe`: one message,
//! "%1", so the event log shows the agent's entries as they are written
//! instead of "the description for event ID 1 cannot be found".

use std::path::PathBuf;

/// `MESSAGE_RESOURCE_DATA` with one block holding message 1 = "%1\r\n",
/// in UTF-16 (what `mc`/`windmc` would compile from a one-line `.mc`).
fn message_table() -> Vec<u8> {
    let text: Vec<u16> = "%1\r\n\0".encode_utf16().collect();
    let mut entry: Vec<u8> = text.iter().flat_map(|u| u.to_le_bytes()).collect();
    while !entry.len().is_multiple_of(4) {
        entry.push(0);
    }
    let length = (entry.len() + 4) as u16;
    let mut out = Vec::new();
    out.extend(1u32.to_le_bytes()); // one block
    out.extend(1u32.to_le_bytes()); // lowest id
    out.extend(1u32.to_le_bytes()); // highest id
    out.extend(16u32.to_le_bytes()); // offset of its entries
    out.extend(length.to_le_bytes());
    out.extend(1u16.to_le_bytes()); // MESSAGE_RESOURCE_UNICODE
    out.extend(entry);
    out
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("windows") {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bin = out.join("messages.bin");
    std::fs::write(&bin, message_table()).expect("write the message table");
    let rc = out.join("messages.rc");
    let bin_path = bin.display().to_string().replace('\\', "/");
    std::fs::write(&rc, format!("1 MESSAGETABLE \"{bin_path}\"\n"))
        .expect("write the resource script");
    // Into every binary the package links (the tests check the text).
    embed_resource::compile_for_everything(&rc, embed_resource::NONE)
        .manifest_required()
        .expect("compile the message table resource");
}
