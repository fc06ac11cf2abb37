//! `vitals-snmp-pass VALUES (-g|-n) OID`: an snmpd `pass` handler serving
//! the objects listed in VALUES, so tests can change what a network
//! printer reports between walks.
//!
//! VALUES holds one object per line: `OID TYPE VALUE`, where TYPE is an
//! snmpd pass type (`integer`, `counter`, `string`, `octet` with hex bytes).
//! `-g` answers that exact object; `-n` the next one after it. Unknown
//! objects get no answer, which snmpd reads as "no such object".

use std::process::ExitCode;

fn arcs(oid: &str) -> Option<Vec<u32>> {
    oid.trim_start_matches('.')
        .split('.')
        .map(|a| a.parse().ok())
        .collect()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(file), Some(mode), Some(oid)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: vitals-snmp-pass VALUES (-g|-n) OID");
        return ExitCode::from(2);
    };
    let Some(wanted) = arcs(oid) else {
        return ExitCode::SUCCESS;
    };
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut objects: Vec<(Vec<u32>, &str, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.trim().splitn(3, ' ');
            let oid = arcs(parts.next()?)?;
            Some((oid, parts.next()?, parts.next().unwrap_or("")))
        })
        .collect();
    objects.sort_by(|a, b| a.0.cmp(&b.0));
    let found = match mode.as_str() {
        "-g" => objects.iter().find(|o| o.0 == wanted),
        "-n" => objects.iter().find(|o| o.0 > wanted),
        _ => None,
    };
    if let Some((oid, kind, value)) = found {
        let dotted: Vec<String> = oid.iter().map(u32::to_string).collect();
        println!(".{}\n{kind}\n{value}", dotted.join("."));
    }
    ExitCode::SUCCESS
}
