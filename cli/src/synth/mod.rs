//! Deterministic synthetic FHIR R4 data, written as NDJSON for exports to read.
//!
//! # Contract
//!
//! [`generate`] writes one file per resource type into a folder: `<Type>.ndjson` when
//! `files_per_type` is 1, `<Type>-1.ndjson` .. `<Type>-N.ndjson` otherwise, each with `.gz`
//! appended when `gzip` is set. All thirteen types ([`RESOURCE_TYPES`]) always get all their
//! files, even when some hold no line (a small run may have no AllergyIntolerance). Existing
//! files of those names are overwritten; other files in the folder are left alone.
//! `files_per_type = 0` is rejected with [`std::io::ErrorKind::InvalidInput`].
//!
//! Every line is one compact FHIR R4 resource, UTF-8, ending in exactly one `\n`, starting with
//! `{"resourceType":"<Type>","id":"<id>","meta":{"lastUpdated":...`.
//!
//! * **Determinism.** The same [`GenOptions`] give byte-identical files. Patient `i` draws from
//!   its own random stream derived from `(seed, i)`, so its resources do not depend on how
//!   patients are grouped into files; they do depend on the number of patients (which fixes how
//!   many Practitioners and Organizations can be referenced).
//! * **Splitting.** Files hold contiguous blocks: patient-bound types are split by blocks of
//!   patients, Practitioner, Organization and Group by blocks of their own index. Concatenating
//!   `<Type>-1` .. `<Type>-N` gives exactly the unsplit `<Type>.ndjson`.
//! * **Memory.** Patients are generated one at a time and written straight to buffered
//!   writers, and at most ten files are open at once, so memory does not grow with the number
//!   of patients or of files. The member list of [`GROUP_ALL`] is streamed too.
//! * **Counts.** `max(1, patients / 50)` Practitioners, `max(1, patients / 200)` Organizations,
//!   four Groups, and per patient about 5 Encounters (1..=9), 20 Observations (0..=40),
//!   3 Conditions, 3 MedicationRequests, 3 Immunizations, 2 Procedures, 2 DiagnosticReports,
//!   1 Provenance and 0.3 AllergyIntolerances: about 40 resources per patient.
//! * **Ids.** [`patient_id`] is `pat-NNNNNN`; Practitioners `prac-NNNNNN`, Organizations
//!   `org-NNNNNN` (0-based, zero-padded to 6 digits); a patient's other resources are
//!   `<prefix>-<patient>-<k>` with `k` the 0-based index within that patient (`enc`, `obs`,
//!   `cond`, `medrx`, `proc`, `imm`, `alg`, `dr`, `prov`; see [`observation_id`]). Groups use
//!   the `GROUP_*` ids.
//! * **References** are relative `Type/id` and always resolve to a generated resource. Every
//!   clinical reference stays within one patient, except for shared observations.
//! * **Shared observations.** Observation `j` of patient `i` is shared iff
//!   [`is_shared_observation`]`(i, j)` (a fixed hash of the two indices, true for about 1 in 50,
//!   independent of the seed) and there are at least two patients. A shared observation has a
//!   second `performer`, `Patient/<patient_id((i + 1) % patients)>`, so it lies in the Patient
//!   compartments of two patients ([`shared_observation_partner`]).
//! * **Times.** `meta.lastUpdated` is uniform over 2019-01-01T00:00:00.000Z ..
//!   2025-12-31T23:59:59.999Z and always formatted `YYYY-MM-DDThh:mm:ss.sssZ`; Groups have
//!   2025-06-01T00:00:00.000Z. Clinical times fall between 2000 (or the day after birth) and
//!   the end of 2025, written in the patient's fixed UTC offset; about 1 in 10 Observations has
//!   a date-only `effectiveDateTime`. Birth dates span 1930-01-01 .. 2020-12-31.
//! * **Groups** (`type` person, `actual` true, `quantity` = number of `member` entries):
//!   [`GROUP_ALL`] lists every patient, [`GROUP_EVEN`] those with an even index, [`GROUP_EMPTY`]
//!   none (no `member` element), [`GROUP_SMALL`] the first `min(10, patients)` patients and,
//!   when there are at least 12 patients, two members that are not current: patient 10 with
//!   `inactive: true` and patient 11 with `period` 2018-01-01 .. 2020-01-01.
//! * **Tags.** Every resource has `meta.tag` `http://example.org/tags|synthetic`, about 10% of
//!   the non-Group ones also `|research`; Patients, Practitioners and Organizations always carry
//!   a US Core `meta.profile`, clinical resources about 80% of the time; about 5% of Conditions
//!   have `meta.security` `v3-Confidentiality|R`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;

use self::groups::{GROUPS, group};
use self::json::{Id, Kind};
use self::patient::patient_resources;
use self::providers::{organization, practitioner};
use self::rng::{GOLDEN, mix};

mod groups;
mod json;
mod patient;
mod providers;
mod rng;
mod tables;
#[cfg(test)]
mod tests;
mod time;

/// Id of the Group holding every patient.
pub const GROUP_ALL: &str = "all-patients";
/// Id of the Group holding the patients with an even index.
pub const GROUP_EVEN: &str = "even-patients";
/// Id of the Group holding the first up-to-10 patients as current members, plus (with at
/// least 12 patients) patient 10 as `inactive` and patient 11 with a `period` that ended on
/// 2020-01-01; neither of those two is a current member.
pub const GROUP_SMALL: &str = "small-cohort";
/// Id of the Group without members.
pub const GROUP_EMPTY: &str = "empty-cohort";

/// Every resource type the generator writes.
pub const RESOURCE_TYPES: [&str; 13] = [
    "Patient",
    "Encounter",
    "Observation",
    "Condition",
    "MedicationRequest",
    "Procedure",
    "Immunization",
    "AllergyIntolerance",
    "DiagnosticReport",
    "Provenance",
    "Practitioner",
    "Organization",
    "Group",
];

/// What [`generate`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenOptions {
    /// Number of patients.
    pub patients: u64,
    /// Same options give byte-identical output.
    pub seed: u64,
    /// Write `<Type>.ndjson.gz` instead of `<Type>.ndjson`.
    pub gzip: bool,
    /// 1 gives `<Type>.ndjson`; N > 1 gives `<Type>-1.ndjson` .. `<Type>-N.ndjson`.
    pub files_per_type: u32,
}

impl Default for GenOptions {
    fn default() -> Self {
        Self {
            patients: 100,
            seed: 42,
            gzip: false,
            files_per_type: 1,
        }
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenSummary {
    /// Resource type -> number of lines written (every type of [`RESOURCE_TYPES`] is
    /// present, possibly with 0).
    pub counts: BTreeMap<String, u64>,
    /// Uncompressed NDJSON bytes written, newlines included.
    pub bytes: u64,
    /// Every file written, sorted.
    pub files: Vec<PathBuf>,
}

/// The id of patient number `i` (0-based).
pub fn patient_id(i: u64) -> String {
    Id(Kind::Patient, i, 0).to_string()
}

/// The id of observation number `observation` (0-based) of patient number `patient`.
pub fn observation_id(patient: u64, observation: u32) -> String {
    Id(Kind::Observation, patient, observation).to_string()
}

/// Whether observation `observation` of patient `patient` is also performed by another patient
/// (see [`shared_observation_partner`] for which one). Independent of the seed, so a test can
/// recompute it; true for about 1 in 50 pairs.
pub fn is_shared_observation(patient: u64, observation: u32) -> bool {
    // Not derived from the seed, so a test can name the shared observations from ids alone.
    const SHARED_SALT: u64 = 0x5AA5_0F0F_C3C3_1234;
    mix(patient.wrapping_mul(GOLDEN) ^ u64::from(observation) ^ SHARED_SALT).is_multiple_of(50)
}

/// The other patient of a shared observation of `patient`, when the dataset has `patients`
/// patients: the next index, wrapping; none with fewer than two patients.
pub fn shared_observation_partner(patient: u64, patients: u64) -> Option<u64> {
    (patients >= 2).then(|| (patient + 1) % patients)
}

/// Writes the dataset into `out_dir` (created if missing), patient by patient.
pub fn generate(opts: &GenOptions, out_dir: &Path) -> io::Result<GenSummary> {
    if opts.files_per_type == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "files_per_type must be at least 1",
        ));
    }
    fs::create_dir_all(out_dir)?;
    let plan = Plan {
        seed: opts.seed,
        patients: opts.patients,
        practitioners: (opts.patients / 50).max(1),
        organizations: (opts.patients / 200).max(1),
    };
    let files = opts.files_per_type;
    let mut summary = GenSummary {
        counts: RESOURCE_TYPES
            .iter()
            .map(|t| ((*t).to_owned(), 0))
            .collect(),
        ..GenSummary::default()
    };
    let mut line = Vec::with_capacity(CHUNK);

    for k in 0..files {
        let mut out = Out::create(out_dir, Kind::Practitioner, k, files, opts.gzip)?;
        for j in block(k, files, plan.practitioners) {
            practitioner(&plan, j, &mut line)?;
            out.line(&mut line)?;
        }
        out.finish(&mut summary)?;
    }
    for k in 0..files {
        let mut out = Out::create(out_dir, Kind::Organization, k, files, opts.gzip)?;
        for j in block(k, files, plan.organizations) {
            organization(&plan, j, &mut line)?;
            out.line(&mut line)?;
        }
        out.finish(&mut summary)?;
    }
    for k in 0..files {
        let mut outs = Kind::PER_PATIENT
            .iter()
            .map(|kind| Out::create(out_dir, *kind, k, files, opts.gzip))
            .collect::<io::Result<Vec<_>>>()?;
        for i in block(k, files, plan.patients) {
            patient_resources(&plan, i, &mut outs, &mut line)?;
        }
        for out in outs {
            out.finish(&mut summary)?;
        }
    }
    for k in 0..files {
        let mut out = Out::create(out_dir, Kind::Group, k, files, opts.gzip)?;
        for g in block(k, files, GROUPS.len() as u64) {
            group(&GROUPS[g as usize], plan.patients, &mut out, &mut line)?;
        }
        out.finish(&mut summary)?;
    }
    summary.files.sort();
    Ok(summary)
}

/// Buffer size of each writer, and the size at which a Group's member list is flushed.
const CHUNK: usize = 1 << 16;

/// Indices `[total * k / n, total * (k + 1) / n)`: contiguous, in order, sizes differing by
/// at most one, so concatenating the files of a type gives the unsplit file.
fn block(k: u32, n: u32, total: u64) -> std::ops::Range<u64> {
    let at = |k: u32| (u128::from(total) * u128::from(k) / u128::from(n)) as u64;
    at(k)..at(k + 1)
}

struct Plan {
    seed: u64,
    patients: u64,
    practitioners: u64,
    organizations: u64,
}

enum Sink {
    Plain(BufWriter<File>),
    // The outer buffer batches lines so deflate sees large writes rather than one per line.
    Gzip(Box<BufWriter<GzEncoder<File>>>),
}

struct Out {
    kind: Kind,
    path: PathBuf,
    sink: Sink,
    lines: u64,
    bytes: u64,
}

impl Out {
    fn create(dir: &Path, kind: Kind, k: u32, n: u32, gzip: bool) -> io::Result<Out> {
        let mut name = if n == 1 {
            format!("{}.ndjson", kind.name())
        } else {
            format!("{}-{}.ndjson", kind.name(), k + 1)
        };
        if gzip {
            name.push_str(".gz");
        }
        let path = dir.join(name);
        let file = File::create(&path)?;
        let sink = if gzip {
            // Level 1: generating test data should not be dominated by compression; the
            // ratio on this repetitive JSON is still about 12:1.
            Sink::Gzip(Box::new(BufWriter::with_capacity(
                CHUNK,
                GzEncoder::new(file, Compression::fast()),
            )))
        } else {
            Sink::Plain(BufWriter::with_capacity(CHUNK, file))
        };
        Ok(Out {
            kind,
            path,
            sink,
            lines: 0,
            bytes: 0,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.bytes += bytes.len() as u64;
        match &mut self.sink {
            Sink::Plain(w) => w.write_all(bytes),
            Sink::Gzip(w) => w.write_all(bytes),
        }
    }

    /// Writes `line` plus the newline, and empties `line` for the next resource.
    fn line(&mut self, line: &mut Vec<u8>) -> io::Result<()> {
        line.push(b'\n');
        self.write(line)?;
        line.clear();
        self.lines += 1;
        Ok(())
    }

    fn finish(self, summary: &mut GenSummary) -> io::Result<()> {
        match self.sink {
            Sink::Plain(mut w) => w.flush()?,
            Sink::Gzip(w) => {
                // Dropping a GzEncoder would write the trailer but swallow its errors.
                let gz = (*w).into_inner().map_err(io::IntoInnerError::into_error)?;
                gz.finish()?.flush()?;
            }
        }
        *summary
            .counts
            .entry(self.kind.name().to_owned())
            .or_default() += self.lines;
        summary.bytes += self.bytes;
        summary.files.push(self.path);
        Ok(())
    }
}
