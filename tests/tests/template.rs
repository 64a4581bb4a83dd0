//! The AWS deployment: `template.yaml` passes cfn-lint and declares what the service needs
//! (the four Rust functions, their event sources, exactly the IAM each one calls, the table,
//! the queues, the bucket, the parameters and the environment contract), and every sample
//! event in `events/` has the shape its handler receives on Lambda.
//!
//! There is no YAML parser in the workspace, so the template is read as text by a small
//! indentation-based reader: `block(text, indent, key)` is the `key:` line at that indent
//! plus everything indented deeper. That is enough for a template we write ourselves and
//! keep in block style (one key per line, 2-space indents).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn template() -> String {
    std::fs::read_to_string(root().join("template.yaml")).expect("template.yaml")
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The `key:` line at exactly `indent` spaces and the lines below it indented deeper (blank
/// lines included), or `None`.
fn block(text: &str, indent: usize, key: &str) -> Option<String> {
    let mut lines = text.lines();
    let head = lines.by_ref().find(|l| {
        indent_of(l) == indent
            && l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest == ":" || rest.starts_with(": "))
    })?;
    let mut out = vec![head];
    out.extend(lines.take_while(|l| l.trim().is_empty() || indent_of(l) > indent));
    Some(out.join("\n"))
}

fn section(key: &str) -> String {
    block(&template(), 0, key).unwrap_or_else(|| panic!("template has no {key} section"))
}

fn resource(name: &str) -> String {
    block(&section("Resources"), 2, name).unwrap_or_else(|| panic!("no resource {name}"))
}

/// Logical ids and types of all resources.
fn resources() -> BTreeMap<String, String> {
    let resources = section("Resources");
    let mut out = BTreeMap::new();
    for line in resources.lines().skip(1) {
        if indent_of(line) == 2
            && !line.trim_start().starts_with('#')
            && let Some(name) = line.trim().strip_suffix(':')
        {
            let body = block(&resources, 2, name).unwrap();
            let ty = body
                .lines()
                .find_map(|l| l.trim().strip_prefix("Type: "))
                .unwrap_or_else(|| panic!("{name} has no Type"));
            out.insert(name.to_owned(), ty.to_owned());
        }
    }
    out
}

/// The value of the first `key: value` line in `text` (any indent), without quotes.
fn value_of(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.trim()
            .strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(": "))
            .map(|v| v.trim().trim_matches('"').to_owned())
    })
}

/// The environment variable names set in a block (`Variables:` maps).
fn env_vars(text: &str) -> BTreeSet<String> {
    let Some(vars) = text
        .lines()
        .position(|l| l.trim() == "Variables:")
        .map(|i| text.lines().skip(i).collect::<Vec<_>>().join("\n"))
    else {
        return BTreeSet::new();
    };
    let head_indent = indent_of(vars.lines().next().unwrap());
    vars.lines()
        .skip(1)
        .take_while(|l| l.trim().is_empty() || indent_of(l) > head_indent)
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.trim().split_once(':').map(|(k, _)| k.to_owned()))
        .filter(|k| !k.is_empty())
        .collect()
}

/// `service:Action` names listed in a block.
fn actions(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter(|a| {
            [
                "dynamodb:",
                "sqs:",
                "s3:",
                "logs:",
                "secretsmanager:",
                "ec2:",
                "events:",
                "lambda:",
            ]
            .iter()
            .any(|p| a.starts_with(p))
        })
        .map(str::to_owned)
        .collect()
}

/// The `- !If` items of a block (statements, in a policy): each one's condition and its
/// lines (the `- !If` line and everything indented deeper).
fn conditional_items(text: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != "- !If" {
            continue;
        }
        let indent = indent_of(line);
        let body: Vec<&str> = std::iter::once(*line)
            .chain(
                lines[i + 1..]
                    .iter()
                    .take_while(|l| l.trim().is_empty() || indent_of(l) > indent)
                    .copied(),
            )
            .collect();
        let condition = body
            .get(1)
            .and_then(|l| l.trim().strip_prefix("- "))
            .unwrap_or_else(|| panic!("`- !If` without a condition:\n{}", body.join("\n")));
        out.push((condition.to_owned(), body.join("\n")));
    }
    out
}

/// The conditional statement of `role` that lists `action` (and, when `on` is given, grants
/// it on that resource): its condition and its text.
fn conditional_statement(role: &str, action: &str) -> Option<(String, String)> {
    conditional_statement_on(role, action, "")
}

fn conditional_statement_on(role: &str, action: &str, on: &str) -> Option<(String, String)> {
    let mut found: Vec<(String, String)> = conditional_items(&resource(role))
        .into_iter()
        .filter(|(_, body)| actions(body).contains(action) && body.contains(on))
        .collect();
    assert!(
        found.len() <= 1,
        "{role}: {action} in more than one statement"
    );
    found.pop()
}

/// The statement of `role` whose `Sid` is `sid`: the `- Sid:` line and everything indented
/// deeper than its dash.
fn statement_by_sid(role: &str, sid: &str) -> String {
    let r = resource(role);
    let lines: Vec<&str> = r.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim() == format!("- Sid: {sid}"))
        .unwrap_or_else(|| panic!("{role}: no statement {sid}"));
    let indent = indent_of(lines[at]);
    std::iter::once(lines[at])
        .chain(
            lines[at + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || indent_of(l) > indent)
                .copied(),
        )
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `Resource` lines of a statement, trimmed.
fn resource_lines(statement: &str) -> Vec<String> {
    statement
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Resource"))
        .map(str::to_owned)
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

// ------------------------------------------------------------------------------- cfn-lint

#[test]
fn template_passes_cfn_lint() {
    let Some(cfn_lint) = std::env::var_os("FHIR_EXPORT_CFN_LINT") else {
        eprintln!("SKIPPED: cfn-lint not installed (run scripts/test)");
        return;
    };
    let out = Command::new(&cfn_lint)
        .arg("template.yaml")
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cfn_lint.to_string_lossy()));
    assert!(
        out.status.success(),
        "cfn-lint template.yaml failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ------------------------------------------------------------------------------- template

const FUNCTIONS: [(&str, &str); 4] = [
    ("KickoffFunction", "kickoff"),
    ("StatusFunction", "status"),
    ("CancelFunction", "cancel"),
    ("WorkerFunction", "worker"),
];

#[test]
fn four_rust_functions_on_arm64() {
    let functions: BTreeSet<String> = resources()
        .into_iter()
        .filter(|(_, ty)| ty == "AWS::Serverless::Function")
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        functions,
        FUNCTIONS.iter().map(|(f, _)| (*f).to_owned()).collect()
    );
    for (name, bin) in FUNCTIONS {
        let f = resource(name);
        for needle in [
            "BuildMethod: rust-cargolambda".to_owned(),
            format!("Binary: {bin}"),
            format!("CodeUri: functions/{bin}"),
            "Handler: bootstrap".to_owned(),
            "Runtime: provided.al2023".to_owned(),
            "Architectures: [arm64]".to_owned(),
            "LogFormat: JSON".to_owned(),
        ] {
            assert!(f.contains(&needle), "{name} lacks `{needle}`:\n{f}");
        }
        // The crate SAM builds must exist and define the binary.
        let manifest = root().join("functions").join(bin).join("Cargo.toml");
        let manifest = std::fs::read_to_string(&manifest)
            .unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
        assert!(
            manifest.contains(&format!("name = \"{bin}\"")),
            "functions/{bin}/Cargo.toml does not name the binary {bin}"
        );
        // SAM would create a second role (and, for SQS events, attach a policy on every queue).
        assert!(!f.contains("Policies:"), "{name}: IAM belongs in its Role");
        let (timeout, memory) = if bin == "worker" {
            ("300", "!Ref WorkerMemorySize")
        } else {
            ("29", "256")
        };
        assert_eq!(value_of(&f, "Timeout").as_deref(), Some(timeout), "{name}");
        assert_eq!(
            value_of(&f, "MemorySize").as_deref(),
            Some(memory),
            "{name}"
        );
    }
    let p = block(&section("Parameters"), 2, "WorkerMemorySize").unwrap();
    assert_eq!(value_of(&p, "Default").as_deref(), Some("1024"));
}

#[test]
fn worker_event_sources() {
    let events = block(&resource("WorkerFunction"), 6, "Events").expect("worker Events");
    let work = block(&events, 8, "Work").expect("work queue event");
    assert!(work.contains("Type: SQS") && work.contains("Queue: !GetAtt WorkQueue.Arn"));
    assert_eq!(value_of(&work, "BatchSize").as_deref(), Some("1"));
    assert!(work.contains("FunctionResponseTypes: [ReportBatchItemFailures]"));

    // The sweep drains the dead letters: an event source on their queue would poll it all
    // the time.
    assert!(!events.contains("DeadLetterQueue"), "{events}");

    let sweep = block(&events, 8, "Sweep").expect("schedule event");
    assert!(sweep.contains("Type: Schedule") && sweep.contains("Schedule: rate(5 minutes)"));
    // Named as the worker is told (FHIR_EXPORT_SWEEP_RULE), so that it can pause it.
    assert_eq!(
        value_of(&sweep, "Name").as_deref(),
        Some("!Sub ${AWS::StackName}-sweep")
    );

    let names: BTreeSet<String> = events
        .lines()
        .filter(|l| indent_of(l) == 8 && !l.trim_start().starts_with('#'))
        .filter_map(|l| l.trim().strip_suffix(':'))
        .map(str::to_owned)
        .collect();
    assert_eq!(names, set(&["Work", "Sweep", "ExampleSchedule"]));
}

/// A `!Sub '...'` value as CloudFormation substitutes it: YAML's single quotes removed (`''`
/// is one quote) and each `${Name}` replaced by `values[Name]` (`${!Name}` is the literal
/// `${Name}`). Panics on a `${...}` without a value.
fn substitute(sub: &str, values: &BTreeMap<&str, String>) -> String {
    let quoted = sub
        .strip_prefix("!Sub '")
        .and_then(|s| s.strip_suffix('\''))
        .unwrap_or_else(|| panic!("not a single-quoted !Sub: {sub}"));
    let mut rest = quoted.replace("''", "'");
    let mut out = String::new();
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let end = rest[at..].find('}').expect("unclosed ${") + at;
        let name = &rest[at + 2..end];
        match name.strip_prefix('!') {
            Some(literal) => out.push_str(&format!("${{{literal}}}")),
            None => out.push_str(
                values
                    .get(name)
                    .unwrap_or_else(|| panic!("no sample value for ${{{name}}}")),
            ),
        }
        rest = rest[end + 1..].to_owned();
    }
    out.push_str(&rest);
    out
}

#[test]
fn example_schedule_hands_the_worker_a_definition() {
    let events = block(&resource("WorkerFunction"), 6, "Events").expect("worker Events");
    let schedule = block(&events, 8, "ExampleSchedule").expect("ExampleSchedule event");
    assert_eq!(value_of(&schedule, "Type").as_deref(), Some("ScheduleV2"));
    // Without an expression the schedule exists, disabled, with a placeholder cadence.
    assert_eq!(
        value_of(&schedule, "State").as_deref(),
        Some("!If [HasExampleSchedule, ENABLED, DISABLED]")
    );
    assert_eq!(
        value_of(&schedule, "ScheduleExpression").as_deref(),
        Some("!If [HasExampleSchedule, !Ref ExampleScheduleExpression, rate(1 day)]")
    );
    assert_eq!(
        value_of(&schedule, "ScheduleExpressionTimezone").as_deref(),
        Some("!Ref ExampleScheduleTimezone")
    );
    assert!(
        value_of(&schedule, "Name").is_some_and(|n| n.contains("${AWS::StackName}")),
        "one schedule name per stack"
    );
    assert!(block(&schedule, 12, "RetryPolicy").is_some());

    let params = section("Parameters");
    let default =
        |name: &str| value_of(&block(&params, 2, name).unwrap(), "Default").unwrap_or_default();
    let input = value_of(&schedule, "Input").expect("ExampleSchedule Input");
    for (query, owner) in [
        (
            default("ExampleScheduleQuery"),
            default("ExampleScheduleOwner"),
        ),
        (
            "_type=Patient,Observation&_typeFilter=Observation%3Fstatus%3Dfinal&_elements=id"
                .to_owned(),
            "client-1@example.org".to_owned(),
        ),
    ] {
        let values: BTreeMap<&str, String> = [
            ("ExampleScheduleQuery", query.clone()),
            ("ExampleScheduleOwner", owner.clone()),
            ("AWS::StackName", "fhir-export".to_owned()),
            ("AWS::Region", "us-east-1".to_owned()),
            ("AWS::AccountId", "123456789012".to_owned()),
        ]
        .into_iter()
        .collect();
        let text = substitute(&input, &values);
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("ExampleSchedule Input is not JSON ({e}): {text}"));
        let object = v.as_object().expect("an object");
        assert_eq!(
            object.keys().collect::<Vec<_>>(),
            [worker::SCHEDULE_KEY],
            "{text}"
        );
        let def = &v[worker::SCHEDULE_KEY];
        assert_eq!(def["name"], "example");
        assert_eq!(def["export"], "/$export");
        assert_eq!(def["query"], query.as_str());
        assert_eq!(def["owner"], owner.as_str());
        // The worker's own reading of it (unknown fields are refused there).
        let parsed: shared::schedule::ScheduleDef = serde_json::from_value(def.clone())
            .unwrap_or_else(|e| panic!("the worker refuses the definition ({e}): {text}"));
        parsed.check().unwrap();
        assert_eq!(
            parsed.level().unwrap(),
            shared::request::ExportLevel::System
        );
        // The sample event is the same shape.
        let sample = event("worker-scheduled-export.json");
        assert_eq!(
            sample[worker::SCHEDULE_KEY]
                .as_object()
                .unwrap()
                .keys()
                .collect::<BTreeSet<_>>(),
            def.as_object().unwrap().keys().collect::<BTreeSet<_>>()
        );
    }
}

#[test]
fn queues_redrive_and_agree_with_the_worker() {
    let work = resource("WorkQueue");
    let dlq = resource("DeadLetterQueue");
    let globals = section("Globals");
    let worker = resource("WorkerFunction");

    let visibility = value_of(&work, "VisibilityTimeout").expect("VisibilityTimeout");
    assert_eq!(visibility, "1800");
    assert_eq!(
        value_of(&globals, "FHIR_EXPORT_VISIBILITY_TIMEOUT_SECS").as_deref(),
        Some(visibility.as_str()),
        "FHIR_EXPORT_VISIBILITY_TIMEOUT_SECS must equal the work queue's VisibilityTimeout"
    );
    let redrive = block(&work, 6, "RedrivePolicy").expect("work queue RedrivePolicy");
    assert!(redrive.contains("deadLetterTargetArn: !GetAtt DeadLetterQueue.Arn"));
    assert_eq!(value_of(&redrive, "maxReceiveCount").as_deref(), Some("5"));
    assert!(work.contains("SqsManagedSseEnabled: true"));

    assert_eq!(
        value_of(&dlq, "MessageRetentionPeriod").as_deref(),
        Some("1209600")
    );
    assert!(dlq.contains("SqsManagedSseEnabled: true"));
    // An SQS event source needs a visibility timeout of at least its function's timeout.
    let worker_timeout: u32 = value_of(&worker, "Timeout").unwrap().parse().unwrap();
    for q in [&work, &dlq] {
        let v: u32 = value_of(q, "VisibilityTimeout").unwrap().parse().unwrap();
        assert!(v >= worker_timeout, "visibility {v} < worker timeout");
    }
}

#[test]
fn table_keys_indexes_and_ttl() {
    let t = resource("Table");
    assert_eq!(
        value_of(&t, "BillingMode").as_deref(),
        Some("PAY_PER_REQUEST")
    );
    let keys = block(&t, 6, "KeySchema").unwrap();
    assert!(keys.contains("AttributeName: pk\n          KeyType: HASH"));
    assert!(keys.contains("AttributeName: sk\n          KeyType: RANGE"));
    for (index, hash, range) in [
        ("active", "active", "updated_at"),
        ("expiry", "expiry_bucket", "expires_at"),
    ] {
        let at = t
            .find(&format!("- IndexName: {index}\n"))
            .unwrap_or_else(|| panic!("no index {index}"));
        let rest = &t[at..];
        let end = rest[1..].find("- IndexName:").map_or(rest.len(), |i| i + 1);
        let gsi = &rest[..end];
        assert!(gsi.contains(&format!(
            "AttributeName: {hash}\n              KeyType: HASH"
        )));
        assert!(gsi.contains(&format!(
            "AttributeName: {range}\n              KeyType: RANGE"
        )));
        assert!(gsi.contains("ProjectionType: ALL"), "{index}");
    }
    let ttl = block(&t, 6, "TimeToLiveSpecification").expect("TTL");
    assert!(ttl.contains("AttributeName: ttl") && ttl.contains("Enabled: true"));
    assert!(t.contains("PointInTimeRecoveryEnabled: true"));
    assert!(t.contains("SSEEnabled: true"));
}

#[test]
fn bucket_is_private_encrypted_tls_only_and_expires() {
    let b = resource("OutputBucket");
    let enc = block(&b, 6, "BucketEncryption").expect("BucketEncryption");
    assert!(enc.contains("SSEAlgorithm: AES256"));
    let pab = block(&b, 6, "PublicAccessBlockConfiguration").expect("public access block");
    for flag in [
        "BlockPublicAcls",
        "BlockPublicPolicy",
        "IgnorePublicAcls",
        "RestrictPublicBuckets",
    ] {
        assert_eq!(value_of(&pab, flag).as_deref(), Some("true"), "{flag}");
    }
    assert!(b.contains("ObjectOwnership: BucketOwnerEnforced"));
    let lifecycle = block(&b, 6, "LifecycleConfiguration").expect("lifecycle rule");
    assert!(lifecycle.contains("Status: Enabled"));
    assert!(lifecycle.contains("ExpirationInDays: !FindInMap [Retention, !Ref RetentionDays,"));
    let abort = block(&lifecycle, 12, "AbortIncompleteMultipartUpload").expect("abort uploads");
    assert_eq!(
        value_of(&abort, "DaysAfterInitiation").as_deref(),
        Some("1")
    );
    assert!(
        !b.contains("VersioningConfiguration"),
        "deleted exports must not linger"
    );

    let policy = resource("OutputBucketPolicy");
    assert!(policy.contains("Effect: Deny"));
    assert!(policy.contains("aws:SecureTransport: \"false\""));
}

#[test]
fn parameters_conditions_and_outputs() {
    let params = section("Parameters");
    let p = |name: &str| block(&params, 2, name).unwrap_or_else(|| panic!("no parameter {name}"));
    for (name, default) in [
        ("OutputUrl", Some("")),
        ("ChunkBytes", Some("33554432")),
        ("MaxFileBytes", Some("67108864")),
        ("FileAccess", Some("redirect")),
        ("SignedUrlTtlSeconds", Some("900")),
        ("RetentionDays", Some("2")),
        ("PublicUrl", Some("")),
        ("JwtIssuer", Some("")),
        ("JwtAudience", Some("")),
        ("AzureCredentialSecretArn", Some("")),
        ("WorkerSubnetIds", Some("")),
        ("WorkerSecurityGroupIds", Some("")),
        ("EventBusName", Some("default")),
        ("ExampleScheduleExpression", Some("")),
        ("ExampleScheduleTimezone", Some("UTC")),
        ("ExampleScheduleQuery", Some("_type=Patient")),
        ("ExampleScheduleOwner", Some("anonymous")),
        ("WorkerReservedConcurrency", Some("0")),
        ("SourceUrl", None),
    ] {
        assert_eq!(value_of(&p(name), "Default").as_deref(), default, "{name}");
    }
    // The worker's reserved concurrency: none unless asked for.
    assert!(section("Conditions").contains(
        "HasWorkerReservedConcurrency: !Not [!Equals [!Ref WorkerReservedConcurrency, 0]]"
    ));
    assert!(resource("WorkerFunction").contains(
        "ReservedConcurrentExecutions: !If [HasWorkerReservedConcurrency, !Ref WorkerReservedConcurrency, !Ref AWS::NoValue]"
    ));
    assert!(p("FileAccess").contains("AllowedValues: [redirect, signed]"));
    let output = p("OutputUrl");
    assert!(output.contains("az://") && output.contains("abfss://"));
    assert!(output.contains("https://account.blob.core.windows.net"));
    assert!(p("SourceUrl").contains("az://") && p("SourceUrl").contains("abfss://"));
    // A FHIR server's base URL is a source too (docs/fhir-server.md).
    assert!(
        value_of(&p("SourceUrl"), "AllowedPattern")
            .is_some_and(|a| a.contains("|^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[^/?#@]+)*$")),
        "SourceUrl takes a FHIR server's https:// base"
    );
    // The Azure adapter is part of the build: nothing may say otherwise.
    for (name, text) in [
        ("template.yaml", template()),
        (
            "docs/deploy.md",
            std::fs::read_to_string(root().join("docs/deploy.md")).expect("docs/deploy.md"),
        ),
    ] {
        assert!(
            !text.to_lowercase().contains("part of this build"),
            "{name} still says the Azure adapter is missing"
        );
    }
    for list in ["WorkerSubnetIds", "WorkerSecurityGroupIds"] {
        assert_eq!(
            value_of(&p(list), "Type").as_deref(),
            Some("CommaDelimitedList"),
            "{list}"
        );
    }
    assert!(
        value_of(&p("AzureCredentialSecretArn"), "AllowedPattern")
            .is_some_and(|a| a.contains(":secretsmanager:")),
        "AzureCredentialSecretArn takes a secret's ARN"
    );
    // Every parameter is in a group of the console's form.
    let groups = block(&section("Metadata"), 4, "ParameterGroups").expect("ParameterGroups");
    let grouped: BTreeSet<String> = groups
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Parameters: ["))
        .flat_map(|l| l.trim_end_matches(']').split(", "))
        .map(str::to_owned)
        .collect();
    let declared: BTreeSet<String> = params
        .lines()
        .filter(|l| indent_of(l) == 2)
        .filter_map(|l| l.trim().strip_suffix(':'))
        .map(str::to_owned)
        .collect();
    assert_eq!(grouped, declared, "ParameterGroups");

    // Retention: one parameter, seconds and lifecycle days from one mapping row per value.
    let retention = block(&section("Mappings"), 2, "Retention").expect("Retention mapping");
    let allowed = value_of(&p("RetentionDays"), "AllowedValues").unwrap();
    for days in allowed.trim_matches(['[', ']']).split(", ") {
        let row = retention
            .lines()
            .find(|l| l.trim().starts_with(&format!("\"{days}\":")))
            .unwrap_or_else(|| panic!("no Retention row for {days}"));
        let days: u64 = days.parse().unwrap();
        assert!(
            row.contains(&format!("Seconds: \"{}\"", days * 86400)),
            "{row}"
        );
        assert!(
            row.contains(&format!("LifecycleDays: {}", days + 1)),
            "{row}"
        );
    }

    let conditions = section("Conditions");
    let c =
        |name: &str| block(&conditions, 2, name).unwrap_or_else(|| panic!("no condition {name}"));
    for name in [
        "UseJwt",
        "HasPublicUrl",
        "HasOutputUrl",
        "UseExternalS3Output",
        "SourceUrlIsS3",
        "SourceUrlIsAzure",
        "HasAzureSecret",
        "AzureSourceWithSecret",
        "UseWorkerVpc",
        "HasExampleSchedule",
        "HasEventBus",
    ] {
        c(name);
    }
    assert!(
        c("HasExampleSchedule").contains("!Not [!Equals [!Ref ExampleScheduleExpression, \"\"]]")
    );
    assert!(c("HasEventBus").contains("!Not [!Equals [!Ref EventBusName, \"\"]]"));
    // The example schedule's definition is JSON built by !Sub: its query and owner may not
    // hold what would end a JSON string.
    let query_pattern = value_of(&p("ExampleScheduleQuery"), "AllowedPattern").unwrap();
    assert_eq!(query_pattern, "^[^\"\\\\]*$");
    assert_eq!(
        value_of(&p("ExampleScheduleOwner"), "AllowedPattern").as_deref(),
        Some("^[A-Za-z0-9._@:-]+$")
    );
    assert!(
        value_of(&p("ExampleScheduleExpression"), "AllowedPattern")
            .is_some_and(|a| a.contains("^$|") && a.contains("cron|rate")),
        "ExampleScheduleExpression: empty, cron(...) or rate(...)"
    );
    let azure_source = c("SourceUrlIsAzure");
    for needle in [
        "!Split [\"://\", !Ref SourceUrl]], \"az\"]",
        "!Split [\"://\", !Ref SourceUrl]], \"abfss\"]",
        "!Split [\".core.windows.net\", !Ref SourceUrl]]",
    ] {
        assert!(
            azure_source.contains(needle),
            "SourceUrlIsAzure lacks {needle}"
        );
    }
    assert!(c("HasAzureSecret").contains("!Not [!Equals [!Ref AzureCredentialSecretArn, \"\"]]"));
    assert!(
        c("AzureSourceWithSecret")
            .contains("!And [!Condition HasAzureSecret, !Condition SourceUrlIsAzure]")
    );
    assert!(
        c("UseWorkerVpc").contains("!Not [!Equals [!Join [\"\", !Ref WorkerSubnetIds], \"\"]]")
    );
    let outputs = section("Outputs");
    for o in [
        "ApiBaseUrl",
        "TableName",
        "WorkQueueUrl",
        "DeadLetterQueueUrl",
        "OutputBucketName",
    ] {
        assert!(block(&outputs, 2, o).is_some(), "no output {o}");
    }
    assert!(block(&outputs, 2, "ApiBaseUrl").unwrap().contains("/fhir"));
}

#[test]
fn environment_contract() {
    let globals = env_vars(&section("Globals"));
    assert_eq!(
        globals,
        set(&[
            "FHIR_EXPORT_PUBLIC_URL",
            "FHIR_EXPORT_BASE_PATH",
            "FHIR_EXPORT_TABLE",
            "FHIR_EXPORT_CHUNK_BYTES",
            "FHIR_EXPORT_MAX_FILE_BYTES",
            "FHIR_EXPORT_FILE_ACCESS",
            "FHIR_EXPORT_SIGNED_URL_TTL_SECS",
            "FHIR_EXPORT_RETENTION_SECS",
            "FHIR_EXPORT_VISIBILITY_TIMEOUT_SECS",
            "FHIR_EXPORT_LOG_FORMAT",
            "RUST_LOG",
        ])
    );
    let g = section("Globals");
    assert_eq!(
        value_of(&g, "FHIR_EXPORT_BASE_PATH").as_deref(),
        Some("/fhir")
    );
    assert_eq!(
        value_of(&g, "FHIR_EXPORT_LOG_FORMAT").as_deref(),
        Some("json")
    );
    assert!(g.contains("FHIR_EXPORT_PUBLIC_URL: !If [HasPublicUrl, !Ref PublicUrl,"));
    for (function, vars) in [
        (
            "KickoffFunction",
            &[
                "FHIR_EXPORT_QUEUE_URL",
                "FHIR_EXPORT_SOURCE",
                "FHIR_EXPORT_OUTPUT",
                "FHIR_EXPORT_AZURE_SECRET",
                "FHIR_EXPORT_UPSTREAM_SECRET",
                "FHIR_EXPORT_MAX_ACTIVE_EXPORTS",
                "FHIR_EXPORT_AUTH_ISSUER",
                "FHIR_EXPORT_AUTH_TOKEN_URL",
                "FHIR_EXPORT_WORK_QUEUE_ARN",
                "FHIR_EXPORT_WORKER_FUNCTION",
            ][..],
        ),
        (
            "StatusFunction",
            &["FHIR_EXPORT_OUTPUT", "FHIR_EXPORT_AZURE_SECRET"][..],
        ),
        (
            "CancelFunction",
            &[
                "FHIR_EXPORT_OUTPUT",
                "FHIR_EXPORT_AZURE_SECRET",
                "FHIR_EXPORT_QUEUE_URL",
                "FHIR_EXPORT_WORK_QUEUE_ARN",
            ][..],
        ),
        (
            "WorkerFunction",
            &[
                "FHIR_EXPORT_QUEUE_URL",
                "FHIR_EXPORT_DEAD_LETTER_QUEUE_URL",
                "FHIR_EXPORT_WORK_QUEUE_ARN",
                "FHIR_EXPORT_SWEEP_RULE",
                "FHIR_EXPORT_OUTPUT",
                "FHIR_EXPORT_SOURCE",
                "FHIR_EXPORT_AZURE_SECRET",
                "FHIR_EXPORT_UPSTREAM_SECRET",
                "FHIR_EXPORT_EVENT_BUS",
                "FHIR_EXPORT_AUTH_ISSUER",
            ][..],
        ),
    ] {
        assert_eq!(env_vars(&resource(function)), set(vars), "{function}");
        // Each name is one the code reads (its crate, the functions' common crate, or the
        // shared crate), not a typo the function would never see.
        let bin = FUNCTIONS
            .iter()
            .find(|(f, _)| *f == function)
            .map(|(_, b)| *b)
            .unwrap();
        let code = [
            format!("functions/{bin}/src"),
            "functions/common/src".to_owned(),
            "shared/src".to_owned(),
        ]
        .iter()
        .flat_map(|d| rust_sources(&root().join(d)))
        .collect::<Vec<_>>()
        .join("\n");
        for var in vars {
            assert!(
                code.contains(&format!("\"{var}\"")),
                "{function}: {var} is set but no code reads it"
            );
        }
        // Every function reads the output URL's form (an Azure account root or not).
        assert!(
            resource(function).contains(
                "FHIR_EXPORT_OUTPUT: !If [HasOutputUrl, !Ref OutputUrl, !Sub \"s3://${OutputBucket}/exports/\"]"
            ),
            "{function}"
        );
    }
    let worker = resource("WorkerFunction");
    assert!(worker.contains("FHIR_EXPORT_DEAD_LETTER_QUEUE_URL: !Ref DeadLetterQueue"));
    assert!(worker.contains(
        "FHIR_EXPORT_OUTPUT: !If [HasOutputUrl, !Ref OutputUrl, !Sub \"s3://${OutputBucket}/exports/\"]"
    ));
    // Export events: the bus when one is named, none otherwise (the worker then announces
    // nothing).
    assert_eq!(
        value_of(&worker, "FHIR_EXPORT_EVENT_BUS").as_deref(),
        Some("!If [HasEventBus, !Ref EventBusName, !Ref AWS::NoValue]")
    );
    // Scheduled runs belong to `<issuer>#<owner>`: the worker must name the issuer exactly as
    // the kick-off does, or a schedule's owner would not see its runs.
    let issuer = value_of(&worker, "FHIR_EXPORT_AUTH_ISSUER");
    assert_eq!(
        issuer.as_deref(),
        Some("!If [UseJwt, !Ref JwtIssuer, !Ref AWS::NoValue]")
    );
    assert_eq!(
        value_of(&resource("KickoffFunction"), "FHIR_EXPORT_AUTH_ISSUER"),
        issuer
    );
    for function in ["StatusFunction", "CancelFunction"] {
        assert!(
            !resource(function).contains("FHIR_EXPORT_AUTH_ISSUER"),
            "{function}"
        );
    }
    assert_eq!(template().matches("FHIR_EXPORT_EVENT_BUS:").count(), 1);
    // The cancel queues the announcement of a cancelled export's end on the work queue, the
    // one the worker consumes.
    for function in ["KickoffFunction", "CancelFunction", "WorkerFunction"] {
        assert_eq!(
            value_of(&resource(function), "FHIR_EXPORT_QUEUE_URL").as_deref(),
            Some("!Ref WorkQueue"),
            "{function}"
        );
    }
}

/// The text of every `.rs` file below `dir`.
fn rust_sources(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(std::fs::read_to_string(&path).unwrap());
        }
    }
    out
}

#[test]
fn each_function_gets_exactly_the_iam_it_calls() {
    let logs = ["logs:CreateLogStream", "logs:PutLogEvents"];
    let expected: [(&str, Vec<&str>); 4] = [
        (
            "KickoffFunction",
            vec![
                "dynamodb:PutItem",
                "dynamodb:GetItem",
                "dynamodb:Query",
                "dynamodb:BatchWriteItem",
                "dynamodb:DeleteItem",
                "sqs:SendMessage",
                "s3:GetObject",
                "s3:ListBucket",
                "secretsmanager:GetSecretValue",
                "lambda:UpdateEventSourceMapping",
                "lambda:GetEventSourceMapping",
                "lambda:ListEventSourceMappings",
            ],
        ),
        (
            "StatusFunction",
            vec![
                "dynamodb:GetItem",
                "dynamodb:Query",
                "s3:GetObject",
                "secretsmanager:GetSecretValue",
            ],
        ),
        (
            "CancelFunction",
            vec![
                "dynamodb:GetItem",
                "dynamodb:UpdateItem",
                "dynamodb:PutItem",
                "dynamodb:Query",
                "sqs:SendMessage",
                "s3:ListBucket",
                "s3:DeleteObject",
                "secretsmanager:GetSecretValue",
            ],
        ),
        (
            "WorkerFunction",
            vec![
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "dynamodb:Query",
                "dynamodb:BatchWriteItem",
                "dynamodb:DeleteItem",
                "sqs:SendMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:GetQueueAttributes",
                "s3:GetObject",
                "s3:PutObject",
                "s3:DeleteObject",
                "s3:ListBucket",
                "s3:AbortMultipartUpload",
                "s3:ListMultipartUploadParts",
                "secretsmanager:GetSecretValue",
                "ec2:CreateNetworkInterface",
                "ec2:DescribeNetworkInterfaces",
                "ec2:DescribeSubnets",
                "ec2:DeleteNetworkInterface",
                "ec2:AssignPrivateIpAddresses",
                "ec2:UnassignPrivateIpAddresses",
                "events:PutEvents",
                "events:EnableRule",
                "events:DisableRule",
                "lambda:UpdateEventSourceMapping",
                "lambda:GetEventSourceMapping",
                "lambda:ListEventSourceMappings",
            ],
        ),
    ];
    let types = resources();
    for (function, mut wanted) in expected {
        let f = resource(function);
        let role = value_of(&f, "Role")
            .and_then(|r| {
                r.strip_prefix("!GetAtt ")
                    .and_then(|r| r.strip_suffix(".Arn"))
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| panic!("{function} has no `Role: !GetAtt <Role>.Arn`"));
        assert_eq!(types.get(&role).map(String::as_str), Some("AWS::IAM::Role"));
        let r = resource(&role);
        wanted.extend(logs);
        assert_eq!(actions(&r), set(&wanted), "{role} of {function}");
        assert!(
            !r.contains("ManagedPolicyArns"),
            "{role}: no managed policies"
        );
        // The wildcards: EC2's Describe actions have no resource-level permissions, and that
        // statement exists only with the worker in a VPC (`worker_vpc_is_optional`); nor do
        // Lambda's List/GetEventSourceMapping name a mapping whose id is known only once
        // deployed (`idle_pause_grants_are_exact`).
        let mut r = r;
        for action in [
            "ec2:CreateNetworkInterface",
            "lambda:GetEventSourceMapping",
            "lambda:UpdateEventSourceMapping",
        ] {
            if let Some((_, statement)) = conditional_statement(&role, action) {
                r = r.replace(&statement, "");
            }
        }
        assert!(
            !r.contains("Resource: \"*\"") && !r.contains(":*\n") && !r.contains("Action: \"*\""),
            "{role}: no wildcards"
        );
        assert!(r.contains("Principal: { Service: lambda.amazonaws.com }"));
    }
    // Roles no function uses would be dead weight or a leftover grant.
    let roles: BTreeSet<String> = types
        .iter()
        .filter(|(_, t)| *t == "AWS::IAM::Role")
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(
        roles,
        set(&["KickoffRole", "StatusRole", "CancelRole", "WorkerRole"])
    );
    // The worker reads the indexes (the sweep), the kick-off the `active` one alone (a
    // client's running exports); the source is read at its prefix.
    assert!(resource("WorkerRole").contains("Resource: !Sub \"${Table.Arn}/index/*\""));
    assert!(
        resource("KickoffRole")
            .contains("Resource: [!GetAtt Table.Arn, !Sub \"${Table.Arn}/index/active\"]")
    );
    for role in ["StatusRole", "CancelRole"] {
        assert!(!resource(role).contains("/index/"), "{role}");
    }
    for role in ["KickoffRole", "WorkerRole"] {
        assert!(resource(role).contains("arn:${AWS::Partition}:s3:::${Path}/*"));
    }
}

#[test]
fn idle_pause_grants_are_exact() {
    let p = block(&section("Parameters"), 2, "PauseWhenIdle").expect("PauseWhenIdle");
    assert_eq!(value_of(&p, "Default").as_deref(), Some("true"));
    assert!(template().contains("UsePauseWhenIdle: !Equals [!Ref PauseWhenIdle, \"true\"]"));
    // Mappings are changed only on the worker's function; reading them has no resource-level
    // grant to narrow to.
    for (role, sid, function) in [
        (
            "KickoffRole",
            "ResumeWork",
            "lambda:FunctionArn: !GetAtt WorkerFunction.Arn",
        ),
        (
            "WorkerRole",
            "PauseWork",
            "lambda:FunctionArn: !Sub arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:function:${AWS::StackName}-WorkerFunction-*",
        ),
    ] {
        let (condition, change) = conditional_statement(role, "lambda:UpdateEventSourceMapping")
            .unwrap_or_else(|| panic!("{role}: no conditional UpdateEventSourceMapping"));
        assert_eq!(condition, "UsePauseWhenIdle", "{role}");
        assert!(change.contains(&format!("Sid: {sid}")), "{role}: {change}");
        assert_eq!(
            actions(&change),
            set(&["lambda:UpdateEventSourceMapping"]),
            "{role}"
        );
        assert!(change.contains(function), "{role}: {change}");
        let (condition, read) = conditional_statement(role, "lambda:GetEventSourceMapping")
            .unwrap_or_else(|| panic!("{role}: no conditional GetEventSourceMapping"));
        assert_eq!(condition, "UsePauseWhenIdle", "{role}");
        assert_eq!(
            actions(&read),
            set(&[
                "lambda:GetEventSourceMapping",
                "lambda:ListEventSourceMappings"
            ]),
            "{role}"
        );
    }
    // The worker pauses its own sweep rule, by the name the rule is given.
    let (condition, rule) = conditional_statement("WorkerRole", "events:DisableRule")
        .expect("the worker's rule grant is conditional");
    assert_eq!(condition, "UsePauseWhenIdle");
    assert_eq!(
        actions(&rule),
        set(&["events:EnableRule", "events:DisableRule"])
    );
    assert_eq!(
        resource_lines(&rule),
        [
            "Resource: !Sub arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:rule/${AWS::StackName}-sweep"
        ]
    );
    let worker = resource("WorkerFunction");
    assert_eq!(
        value_of(&worker, "FHIR_EXPORT_SWEEP_RULE").as_deref(),
        Some("!If [UsePauseWhenIdle, !Sub \"${AWS::StackName}-sweep\", !Ref AWS::NoValue]")
    );
    for function in ["KickoffFunction", "WorkerFunction"] {
        assert_eq!(
            value_of(&resource(function), "FHIR_EXPORT_WORK_QUEUE_ARN").as_deref(),
            Some("!If [UsePauseWhenIdle, !GetAtt WorkQueue.Arn, !Ref AWS::NoValue]"),
            "{function}"
        );
    }
    assert_eq!(
        value_of(&resource("KickoffFunction"), "FHIR_EXPORT_WORKER_FUNCTION").as_deref(),
        Some("!If [UsePauseWhenIdle, !Ref WorkerFunction, !Ref AWS::NoValue]")
    );
    for role in ["StatusRole", "CancelRole"] {
        assert!(!resource(role).contains("lambda:"), "{role}");
    }
    // The cancel marks its announcement, and may write no other item.
    let (condition, mark) = conditional_statement("CancelRole", "dynamodb:PutItem")
        .expect("the cancel's mark grant is conditional");
    assert_eq!(condition, "UsePauseWhenIdle");
    assert_eq!(actions(&mark), set(&["dynamodb:PutItem"]));
    assert!(mark.contains("dynamodb:LeadingKeys: [ACTIVITY]"), "{mark}");
    assert_eq!(
        value_of(&resource("CancelFunction"), "FHIR_EXPORT_WORK_QUEUE_ARN").as_deref(),
        Some("!If [UsePauseWhenIdle, !GetAtt WorkQueue.Arn, !Ref AWS::NoValue]")
    );
}

#[test]
fn export_events_and_notify_grants_are_exact() {
    // The worker alone puts events, only with a bus named, and only on that bus.
    let (condition, statement) = conditional_statement("WorkerRole", "events:PutEvents")
        .expect("the worker's events:PutEvents grant is conditional");
    assert_eq!(condition, "HasEventBus");
    assert_eq!(actions(&statement), set(&["events:PutEvents"]));
    assert_eq!(
        resource_lines(&statement),
        [
            "Resource: !Sub arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/${EventBusName}"
        ]
    );
    assert!(statement.contains("- !Ref AWS::NoValue"));
    for role in ["KickoffRole", "StatusRole", "CancelRole"] {
        assert!(!resource(role).contains("events:"), "{role}");
    }
    assert_eq!(template().matches("events:PutEvents").count(), 1);
    // A bus name, not an ARN or a pattern: the grant's ARN is built from it.
    let bus = block(&section("Parameters"), 2, "EventBusName").unwrap();
    let pattern = value_of(&bus, "AllowedPattern").expect("EventBusName AllowedPattern");
    assert!(
        !pattern.contains(':') && !pattern.contains('*'),
        "EventBusName: {pattern}"
    );

    // The cancel sends one thing, the `notify` message, on the work queue only; it reads and
    // deletes nothing there.
    let notify = statement_by_sid("CancelRole", "QueueNotify");
    assert_eq!(actions(&notify), set(&["sqs:SendMessage"]));
    assert_eq!(resource_lines(&notify), ["Resource: !GetAtt WorkQueue.Arn"]);
    let cancel = resource("CancelRole");
    assert_eq!(cancel.matches("sqs:").count(), 1, "CancelRole: {cancel}");
    assert!(!cancel.contains("DeadLetterQueue"));
    // The status function queues nothing.
    assert!(!resource("StatusRole").contains("sqs:"));
}

/// Route key -> the integration it targets.
fn routes() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, ty) in resources() {
        if ty != "AWS::ApiGatewayV2::Route" {
            continue;
        }
        let r = resource(&name);
        let key = value_of(&r, "RouteKey").unwrap_or_else(|| panic!("{name}: RouteKey"));
        let target = value_of(&r, "Target").unwrap_or_else(|| panic!("{name}: Target"));
        // What a client reads to learn how to authenticate is open; everything else takes
        // the optional JWT authorizer.
        if [
            "GET /fhir/metadata",
            "GET /fhir/.well-known/smart-configuration",
        ]
        .contains(&key.as_str())
        {
            assert!(
                r.contains("AuthorizationType: NONE") && !r.contains("AuthorizerId"),
                "{name}: open"
            );
        } else {
            assert!(
                r.contains("AuthorizationType: !If [UseJwt, JWT, NONE]")
                    && r.contains(
                        "AuthorizerId: !If [UseJwt, !Ref JwtAuthorizer, !Ref AWS::NoValue]"
                    ),
                "{name}: every other route takes the optional JWT authorizer"
            );
        }
        let integration = target
            .strip_prefix("!Sub integrations/${")
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or_else(|| panic!("{name}: Target {target}"));
        assert!(out.insert(key, integration.to_owned()).is_none(), "{name}");
    }
    out
}

#[test]
fn http_api_routes_payload_2_and_optional_jwt() {
    let expected: BTreeMap<String, String> = [
        ("GET /fhir/$export", "KickoffIntegration"),
        ("POST /fhir/$export", "KickoffIntegration"),
        ("GET /fhir/Patient/$export", "KickoffIntegration"),
        ("POST /fhir/Patient/$export", "KickoffIntegration"),
        ("GET /fhir/Group/{id}/$export", "KickoffIntegration"),
        ("POST /fhir/Group/{id}/$export", "KickoffIntegration"),
        ("GET /fhir/_export/{job}", "StatusIntegration"),
        ("GET /fhir/_export/{job}/files/{name+}", "StatusIntegration"),
        ("GET /fhir/metadata", "KickoffIntegration"),
        // A client's scheduled exports, and a run started now (docs/scheduled-exports.md).
        ("GET /fhir/_schedules", "KickoffIntegration"),
        ("GET /fhir/_schedules/{name}", "KickoffIntegration"),
        ("POST /fhir/_schedules/{name}/$run", "KickoffIntegration"),
        (
            "GET /fhir/.well-known/smart-configuration",
            "KickoffIntegration",
        ),
        ("$default", "StatusIntegration"),
        ("DELETE /fhir/_export/{job}", "CancelIntegration"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(routes(), expected);
    for (integration, function) in [
        ("KickoffIntegration", "KickoffFunction"),
        ("StatusIntegration", "StatusFunction"),
        ("CancelIntegration", "CancelFunction"),
    ] {
        let i = resource(integration);
        assert!(i.contains("IntegrationType: AWS_PROXY"));
        assert!(i.contains("PayloadFormatVersion: \"2.0\""), "{integration}");
        assert!(i.contains(&format!("IntegrationUri: !GetAtt {function}.Arn")));
        let permission = resource(&function.replace("Function", "InvokePermission"));
        assert!(permission.contains(&format!("FunctionName: !Ref {function}")));
        assert!(permission.contains("Principal: apigateway.amazonaws.com"));
    }
    let authorizer = resource("JwtAuthorizer");
    assert!(authorizer.contains("Condition: UseJwt"));
    assert!(authorizer.contains("AuthorizerType: JWT"));
    assert!(resource("HttpApi").contains("ProtocolType: HTTP"));
    assert!(resource("HttpApiStage").contains("StageName: $default"));
}

#[test]
fn azure_secret_only_for_the_functions_that_reach_the_account() {
    // The condition each function's secret depends on: the worker, status (signs links,
    // streams files) and cancel (deletes files) whenever the secret is set; the kick-off
    // only to read an Azure source.
    for (function, role, condition) in [
        ("KickoffFunction", "KickoffRole", "AzureSourceWithSecret"),
        ("StatusFunction", "StatusRole", "HasAzureSecret"),
        ("CancelFunction", "CancelRole", "HasAzureSecret"),
        ("WorkerFunction", "WorkerRole", "HasAzureSecret"),
    ] {
        let f = resource(function);
        assert!(
            f.contains(&format!(
                "FHIR_EXPORT_AZURE_SECRET: !If [{condition}, !Ref AzureCredentialSecretArn, !Ref AWS::NoValue]"
            )),
            "{function}: FHIR_EXPORT_AZURE_SECRET under {condition}"
        );
        let (cond, statement) = conditional_statement_on(
            role,
            "secretsmanager:GetSecretValue",
            "AzureCredentialSecretArn",
        )
        .unwrap_or_else(|| panic!("{role}: the secret's grant is not conditional"));
        assert_eq!(cond, condition, "{role}");
        assert_eq!(
            actions(&statement),
            set(&["secretsmanager:GetSecretValue"]),
            "{role}"
        );
        // Exactly the secret: no wildcard, no other resource.
        let resources: Vec<&str> = statement
            .lines()
            .filter(|l| l.trim().starts_with("Resource"))
            .collect();
        assert_eq!(
            resources.iter().map(|l| l.trim()).collect::<Vec<_>>(),
            ["Resource: !Ref AzureCredentialSecretArn"],
            "{role}"
        );
        assert!(statement.contains("- !Ref AWS::NoValue"), "{role}");
    }
    // Nothing else in the template mentions Secrets Manager but the upstream's secret.
    let t = template();
    assert_eq!(t.matches("secretsmanager:GetSecretValue").count(), 6);
    assert_eq!(t.matches("FHIR_EXPORT_AZURE_SECRET:").count(), 4);
    // An Azure source has no S3 grants to derive: they exist for an s3:// source only.
    for role in ["KickoffRole", "WorkerRole"] {
        for action in ["s3:GetObject", "s3:ListBucket"] {
            let source = conditional_items(&resource(role))
                .into_iter()
                .find(|(_, body)| actions(body).contains(action) && body.contains("SourceUrl"))
                .unwrap_or_else(|| panic!("{role}: no conditional source grant for {action}"));
            assert_eq!(source.0, "SourceUrlIsS3", "{role} {action}");
        }
    }
}

#[test]
fn upstream_secret_only_for_the_functions_that_read_the_source() {
    // The kick-off (Groups, patients) and the worker read a FHIR server source; status and
    // cancel never do.
    for (function, role) in [
        ("KickoffFunction", "KickoffRole"),
        ("WorkerFunction", "WorkerRole"),
    ] {
        assert!(
            resource(function).contains(
                "FHIR_EXPORT_UPSTREAM_SECRET: !If [HasUpstreamSecret, !Ref UpstreamSecretArn, !Ref AWS::NoValue]"
            ),
            "{function}"
        );
        let (cond, statement) =
            conditional_statement_on(role, "secretsmanager:GetSecretValue", "UpstreamSecretArn")
                .unwrap_or_else(|| {
                    panic!("{role}: the upstream secret's grant is not conditional")
                });
        assert_eq!(cond, "HasUpstreamSecret", "{role}");
        assert_eq!(
            actions(&statement),
            set(&["secretsmanager:GetSecretValue"]),
            "{role}"
        );
        let resources: Vec<&str> = statement
            .lines()
            .filter(|l| l.trim().starts_with("Resource"))
            .map(str::trim)
            .collect();
        assert_eq!(resources, ["Resource: !Ref UpstreamSecretArn"], "{role}");
    }
    for (function, role) in [
        ("StatusFunction", "StatusRole"),
        ("CancelFunction", "CancelRole"),
    ] {
        assert!(
            !resource(function).contains("FHIR_EXPORT_UPSTREAM_SECRET"),
            "{function}"
        );
        assert!(!resource(role).contains("UpstreamSecretArn"), "{role}");
    }
    assert_eq!(
        template().matches("FHIR_EXPORT_UPSTREAM_SECRET:").count(),
        2
    );
}

#[test]
fn worker_vpc_is_optional() {
    let worker = resource("WorkerFunction");
    let vpc = block(&worker, 6, "VpcConfig").expect("worker VpcConfig");
    for needle in [
        "VpcConfig: !If",
        "- UseWorkerVpc",
        "- SubnetIds: !Ref WorkerSubnetIds",
        "SecurityGroupIds: !Ref WorkerSecurityGroupIds",
        "- !Ref AWS::NoValue",
    ] {
        assert!(
            vpc.contains(needle),
            "worker VpcConfig lacks `{needle}`:\n{vpc}"
        );
    }
    for function in ["KickoffFunction", "StatusFunction", "CancelFunction"] {
        assert!(
            !resource(function).contains("VpcConfig"),
            "{function} runs outside the VPC (docs/deploy.md)"
        );
    }
    // Lambda attaches the worker through network interfaces its role creates.
    let (condition, statement) = conditional_statement("WorkerRole", "ec2:CreateNetworkInterface")
        .expect("the worker's network-interface grant is conditional");
    assert_eq!(condition, "UseWorkerVpc");
    assert_eq!(
        actions(&statement),
        set(&[
            "ec2:CreateNetworkInterface",
            "ec2:DescribeNetworkInterfaces",
            "ec2:DescribeSubnets",
            "ec2:DeleteNetworkInterface",
            "ec2:AssignPrivateIpAddresses",
            "ec2:UnassignPrivateIpAddresses",
        ])
    );
    for role in ["KickoffRole", "StatusRole", "CancelRole"] {
        assert!(!resource(role).contains("ec2:"), "{role}");
    }
    // Subnets without security groups are refused before anything is created.
    let rule = block(&section("Rules"), 2, "WorkerSubnetsNeedSecurityGroups").expect("rule");
    assert!(rule.contains("Fn::EachMemberEquals: [!Ref WorkerSubnetIds, \"\"]"));
    assert!(rule.contains("Fn::EachMemberEquals: [!Ref WorkerSecurityGroupIds, \"\"]"));
}

// ------------------------------------------------------------------------------- events

fn event(name: &str) -> Value {
    let path = root().join("events").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
}

fn str_at<'a>(v: &'a Value, pointer: &str, name: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{name}: no string at {pointer}"))
}

/// Whether a route path (`/fhir/Group/{id}/$export`) matches a request path; returns the
/// path parameters.
fn match_route(route: &str, path: &str) -> Option<BTreeMap<String, String>> {
    let mut params = BTreeMap::new();
    let mut have = path.trim_start_matches('/').split('/');
    for want in route.trim_start_matches('/').split('/') {
        if let Some(var) = want.strip_prefix('{').and_then(|w| w.strip_suffix("+}")) {
            let rest: Vec<&str> = have.by_ref().collect();
            if rest.is_empty() {
                return None;
            }
            params.insert(var.to_owned(), rest.join("/"));
            return Some(params);
        }
        let seg = have.next()?;
        if let Some(var) = want.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
            params.insert(var.to_owned(), seg.to_owned());
        } else if want != seg {
            return None;
        }
    }
    have.next().is_none().then_some(params)
}

/// Checks an API Gateway HTTP API payload 2.0 event against the template's routes and
/// returns it.
fn api_event(name: &str, method: &str, path: &str, query: &str) -> Value {
    let e = event(name);
    let routes = routes();
    assert_eq!(e["version"], "2.0", "{name}");
    let route_key = str_at(&e, "/routeKey", name);
    assert!(
        routes.contains_key(route_key),
        "{name}: {route_key} is not a template route"
    );
    assert_eq!(str_at(&e, "/requestContext/routeKey", name), route_key);
    let (route_method, route_path) = route_key.split_once(' ').expect("METHOD /path");
    assert_eq!(route_method, method, "{name}");
    assert_eq!(str_at(&e, "/requestContext/http/method", name), method);
    assert_eq!(str_at(&e, "/rawPath", name), path, "{name}");
    assert_eq!(str_at(&e, "/requestContext/http/path", name), path);
    let params = match_route(route_path, path)
        .unwrap_or_else(|| panic!("{name}: {path} does not match {route_key}"));
    let given: BTreeMap<String, String> = e
        .get("pathParameters")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(given, params, "{name}: pathParameters");
    assert_eq!(str_at(&e, "/rawQueryString", name), query, "{name}");
    if let Some(q) = e.get("queryStringParameters").and_then(Value::as_object) {
        for k in q.keys() {
            assert!(
                query.contains(&format!("{k}=")),
                "{name}: {k} not in rawQueryString"
            );
        }
    }
    let headers = e["headers"].as_object().expect("headers");
    for k in headers.keys() {
        assert_eq!(k, &k.to_lowercase(), "{name}: header names are lower-case");
    }
    assert_eq!(str_at(&e, "/requestContext/stage", name), "$default");
    for field in ["requestId", "domainName", "accountId", "apiId", "time"] {
        str_at(&e, &format!("/requestContext/{field}"), name);
    }
    assert!(
        e["requestContext"]["timeEpoch"].is_u64(),
        "{name}: timeEpoch"
    );
    assert_eq!(
        headers.get("host").and_then(Value::as_str),
        Some(str_at(&e, "/requestContext/domainName", name))
    );
    assert!(e["isBase64Encoded"].is_boolean(), "{name}: isBase64Encoded");
    if let Some(claims) = e.pointer("/requestContext/authorizer/jwt/claims") {
        let claims = claims.as_object().expect("claims");
        assert!(
            claims.values().all(Value::is_string),
            "{name}: API Gateway passes JWT claims as strings"
        );
        // One sample has no client on purpose (such a token may export nothing).
        assert!(
            claims.contains_key("client_id")
                || claims.contains_key("sub")
                || name == "authz-kickoff-no-client-get.json",
            "{name}"
        );
    }
    e
}

#[test]
fn api_events_have_the_payload_2_shape() {
    let e = api_event(
        "kickoff-system-get.json",
        "GET",
        "/fhir/$export",
        "_type=Patient,Observation",
    );
    assert_eq!(e["headers"]["accept"], "application/fhir+json");
    assert_eq!(e["headers"]["prefer"], "respond-async");
    assert_eq!(e["queryStringParameters"]["_type"], "Patient,Observation");

    let e = api_event(
        "kickoff-group-post.json",
        "POST",
        "/fhir/Group/all-patients/$export",
        "",
    );
    assert_eq!(e["headers"]["content-type"], "application/fhir+json");
    assert_eq!(e["isBase64Encoded"], false);
    let body: Value = serde_json::from_str(str_at(&e, "/body", "kickoff-group-post.json"))
        .expect("the POST body is JSON");
    assert_eq!(body["resourceType"], "Parameters");
    assert_eq!(body["parameter"][0]["name"], "_type");
    assert_eq!(body["parameter"][0]["valueString"], "Patient");
    assert_eq!(
        e.pointer("/requestContext/authorizer/jwt/claims/client_id"),
        Some(&Value::from("client-1"))
    );

    let e = api_event(
        "kickoff-bad-since.json",
        "GET",
        "/fhir/$export",
        "_since=yesterday",
    );
    assert_eq!(e["queryStringParameters"]["_since"], "yesterday");

    let job = "0123456789abcdef0123456789abcdef";
    api_event(
        "status-get.json",
        "GET",
        &format!("/fhir/_export/{job}"),
        "",
    );
    api_event(
        "cancel-delete.json",
        "DELETE",
        &format!("/fhir/_export/{job}"),
        "",
    );
    api_event("metadata-get.json", "GET", "/fhir/metadata", "");

    // The authorizer's claims, as the functions read them (tests/tests/events_authz.rs).
    for (name, method, path, query) in [
        ("authz-kickoff-system-get.json", "GET", "/fhir/$export", ""),
        (
            "authz-kickoff-type-denied-get.json",
            "GET",
            "/fhir/$export",
            "_type=Condition",
        ),
        (
            "authz-kickoff-lenient-get.json",
            "GET",
            "/fhir/$export",
            "_type=Patient,Condition",
        ),
        (
            "authz-kickoff-no-client-get.json",
            "GET",
            "/fhir/$export",
            "",
        ),
        (
            "authz-status-get.json",
            "GET",
            &format!("/fhir/_export/{job}"),
            "",
        ),
        (
            "authz-cancel-delete.json",
            "DELETE",
            &format!("/fhir/_export/{job}"),
            "",
        ),
        (
            "authz-file-get.json",
            "GET",
            &format!("/fhir/_export/{job}/files/Patient-1.ndjson"),
            "",
        ),
    ] {
        let e = api_event(name, method, path, query);
        let claims = e
            .pointer("/requestContext/authorizer/jwt/claims")
            .and_then(Value::as_object)
            .unwrap_or_else(|| panic!("{name}: JWT claims"));
        assert_eq!(claims["iss"], "https://auth.example", "{name}");
        // API Gateway passes every claim as a string.
        assert!(claims.values().all(Value::is_string), "{name}");
        assert_eq!(
            claims.contains_key("client_id"),
            name != "authz-kickoff-no-client-get.json",
            "{name}"
        );
    }
}

/// Checks an SQS event and returns the parsed bodies of its records.
fn sqs_event(name: &str, queue: &str) -> Vec<String> {
    let e = event(name);
    let records = e["Records"].as_array().expect("Records");
    assert!(!records.is_empty(), "{name}: no records");
    records
        .iter()
        .map(|r| {
            for field in ["messageId", "receiptHandle", "md5OfBody", "awsRegion"] {
                assert!(r[field].is_string(), "{name}: {field}");
            }
            assert_eq!(r["eventSource"], "aws:sqs", "{name}");
            assert_eq!(
                r["eventSourceARN"],
                format!("arn:aws:sqs:us-east-1:123456789012:{queue}"),
                "{name}"
            );
            let count = r["attributes"]["ApproximateReceiveCount"]
                .as_str()
                .expect("ApproximateReceiveCount is a string");
            assert!(count.parse::<u32>().is_ok_and(|c| c >= 1), "{name}");
            r["body"].as_str().expect("body is a string").to_owned()
        })
        .collect()
}

#[test]
fn worker_events_have_the_sqs_and_schedule_shapes() {
    let job = "0123456789abcdef0123456789abcdef";
    let bodies = sqs_event("worker-sqs-plan.json", "fhir-export-work");
    assert_eq!(bodies.len(), 2);
    let plan: Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(
        plan,
        serde_json::json!({"v": 1, "type": "plan", "job": job})
    );
    let malformed: Value = serde_json::from_str(&bodies[1]).unwrap();
    assert_eq!(malformed, serde_json::json!({"v": 99}));

    let e = event("worker-schedule.json");
    assert_eq!(e["source"], "aws.events");
    assert_eq!(e["detail-type"], "Scheduled Event");
    assert!(
        e["resources"][0]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:events:")
    );
    assert!(e["detail"].is_object() && e.get("Records").is_none());

    // EventBridge Scheduler hands the worker the target's input as it is: the definition
    // under its key, and nothing of an SQS batch or an EventBridge event.
    let e = event("worker-scheduled-export.json");
    assert_eq!(
        e.as_object().unwrap().keys().collect::<Vec<_>>(),
        [worker::SCHEDULE_KEY]
    );
    let def: shared::schedule::ScheduleDef =
        serde_json::from_value(e[worker::SCHEDULE_KEY].clone()).expect("a schedule definition");
    def.check().unwrap();
    assert_eq!(def.name, "nightly");
    assert_eq!(def.export, "/$export");
    assert_eq!(def.query, "_type=Patient");
    assert_eq!(def.owner, "anonymous");
    assert_eq!(
        (def.cron.as_deref(), def.rate.as_deref()),
        (None, None),
        "on AWS the cadence is EventBridge Scheduler's"
    );
}

#[test]
fn every_event_file_is_checked() {
    let mut names: Vec<String> = std::fs::read_dir(root().join("events"))
        .expect("events/")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "authz-cancel-delete.json",
            "authz-file-get.json",
            "authz-kickoff-lenient-get.json",
            "authz-kickoff-no-client-get.json",
            "authz-kickoff-system-get.json",
            "authz-kickoff-type-denied-get.json",
            "authz-status-get.json",
            "cancel-delete.json",
            "kickoff-bad-since.json",
            "kickoff-group-post.json",
            "kickoff-system-get.json",
            "metadata-get.json",
            "status-get.json",
            "worker-schedule.json",
            "worker-scheduled-export.json",
            "worker-sqs-plan.json",
        ],
        "a new event needs its shape checked here"
    );
}
