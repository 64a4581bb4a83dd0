//! The four Groups, whose member lists are streamed rather than built.

use std::io::{self, Write};

use super::json::{Id, Kind, Ref, TAG_SYNTHETIC};
use super::time::GROUP_LAST_UPDATED;
use super::{CHUNK, GROUP_ALL, GROUP_EMPTY, GROUP_EVEN, GROUP_SMALL, Out};

pub(super) struct GroupSpec {
    id: &'static str,
    name: &'static str,
    members: fn(u64) -> Vec<Member>,
}

/// How many members a Group lists and which ones, without building the list: [`GROUP_ALL`]
/// can hold millions of patients.
enum Member {
    Range { step: u64, end: u64 },
    Inactive(u64),
    Ended(u64),
}

impl Member {
    fn len(&self) -> u64 {
        match *self {
            Member::Range { step, end } => end.div_ceil(step),
            Member::Inactive(_) | Member::Ended(_) => 1,
        }
    }
}

pub(super) const GROUPS: [GroupSpec; 4] = [
    GroupSpec {
        id: GROUP_ALL,
        name: "All patients",
        members: |n| vec![Member::Range { step: 1, end: n }],
    },
    GroupSpec {
        id: GROUP_EVEN,
        name: "Patients with an even index",
        members: |n| vec![Member::Range { step: 2, end: n }],
    },
    GroupSpec {
        id: GROUP_SMALL,
        name: "Small cohort",
        members: |n| {
            let mut members = vec![Member::Range {
                step: 1,
                end: n.min(10),
            }];
            if n >= 12 {
                members.push(Member::Inactive(10));
                members.push(Member::Ended(11));
            }
            members
        },
    },
    GroupSpec {
        id: GROUP_EMPTY,
        name: "Empty cohort",
        members: |_| Vec::new(),
    },
];

pub(super) fn group(
    spec: &GroupSpec,
    patients: u64,
    out: &mut Out,
    b: &mut Vec<u8>,
) -> io::Result<()> {
    let members = (spec.members)(patients);
    let quantity: u64 = members.iter().map(Member::len).sum();
    write!(
        b,
        "{{\"resourceType\":\"Group\",\"id\":\"{}\",\"meta\":{{\"lastUpdated\":\"{GROUP_LAST_UPDATED}\",\"tag\":[{TAG_SYNTHETIC}]}},\"type\":\"person\",\"actual\":true,\"name\":\"{}\",\"quantity\":{quantity}",
        spec.id, spec.name
    )?;
    if quantity > 0 {
        b.extend_from_slice(b",\"member\":[");
        let mut first = true;
        let mut entry = |b: &mut Vec<u8>, patient: u64, extra: &str| -> io::Result<()> {
            if !first {
                b.push(b',');
            }
            first = false;
            write!(
                b,
                "{{\"entity\":{}{extra}}}",
                Ref(Id(Kind::Patient, patient, 0))
            )?;
            if b.len() >= CHUNK {
                out.write(b)?;
                b.clear();
            }
            Ok(())
        };
        for member in &members {
            match *member {
                Member::Range { step, end } => {
                    for patient in (0..end).step_by(step as usize) {
                        entry(b, patient, "")?;
                    }
                }
                Member::Inactive(patient) => entry(b, patient, ",\"inactive\":true")?,
                Member::Ended(patient) => entry(
                    b,
                    patient,
                    ",\"period\":{\"start\":\"2018-01-01\",\"end\":\"2020-01-01\"}",
                )?,
            }
        }
        b.push(b']');
    }
    b.push(b'}');
    out.line(b)
}
