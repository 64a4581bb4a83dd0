//! The fixed vocabularies the generator draws from.

use super::time::{DAY, HOUR, MINUTE, Zone};

pub(super) struct City {
    pub(super) name: &'static str,
    pub(super) state: &'static str,
    pub(super) country: &'static str,
    pub(super) zip_prefix: &'static str,
    pub(super) zip_digits: u32,
    pub(super) zone: Zone,
}

const fn city(
    name: &'static str,
    state: &'static str,
    country: &'static str,
    zip_prefix: &'static str,
    zip_digits: u32,
    minutes: i64,
    suffix: &'static str,
) -> City {
    City {
        name,
        state,
        country,
        zip_prefix,
        zip_digits,
        zone: Zone { minutes, suffix },
    }
}

/// US cities first; [`US_CITIES`] of them, then a few abroad for other offsets and accents.
/// Offsets are fixed all year: any valid offset exercises zone handling, and daylight saving
/// rules would only add a calendar dependency.
pub(super) const CITIES: &[City] = &[
    city("Boston", "MA", "US", "021", 2, -300, "-05:00"),
    city("Springfield", "MA", "US", "011", 2, -300, "-05:00"),
    city("Worcester", "MA", "US", "016", 2, -300, "-05:00"),
    city("Miami", "FL", "US", "331", 2, -300, "-05:00"),
    city("Chicago", "IL", "US", "606", 2, -360, "-06:00"),
    city("Austin", "TX", "US", "787", 2, -360, "-06:00"),
    city("Denver", "CO", "US", "802", 2, -420, "-07:00"),
    city("Seattle", "WA", "US", "981", 2, -480, "-08:00"),
    city("San José", "CA", "US", "951", 2, -480, "-08:00"),
    city("München", "BY", "DE", "80", 3, 60, "+01:00"),
    city("Zürich", "ZH", "CH", "80", 2, 60, "+01:00"),
    city("Reykjavík", "", "IS", "10", 1, 0, "Z"),
    city("Lisboa", "", "PT", "1100-", 3, 0, "+00:00"),
];
pub(super) const US_CITIES: usize = 9;

pub(super) const STREETS: &[&str] = &[
    "Main St",
    "Oak Ave",
    "Maple Dr",
    "Elm St",
    "Cedar Ln",
    "Pine Rd",
    "Washington Blvd",
    "Lake Shore Dr",
    "Hauptstraße",
    "Rua Augusta",
];

pub(super) const FAMILY: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Miller",
    "Davis",
    "García",
    "Rodríguez",
    "Martínez",
    "Hernández",
    "López",
    "Wilson",
    "Anderson",
    "Taylor",
    "Thomas",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Thompson",
    "White",
    "Harris",
    "Clark",
    "Nguyen",
    "Müller",
    "Schäfer",
    "O'Connor",
    "Kowalski",
    "Østergaard",
];
pub(super) const GIVEN_MALE: &[&str] = &[
    "James",
    "John",
    "Robert",
    "Michael",
    "William",
    "David",
    "Richard",
    "Joseph",
    "Thomas",
    "Charles",
    "José",
    "Luis",
    "Jürgen",
    "François",
    "Noah",
    "Liam",
    "Mateo",
    "Ethan",
];
pub(super) const GIVEN_FEMALE: &[&str] = &[
    "Mary",
    "Patricia",
    "Jennifer",
    "Linda",
    "Elizabeth",
    "Barbara",
    "Susan",
    "Jessica",
    "Sarah",
    "Karen",
    "María",
    "Zoë",
    "Chloé",
    "Renée",
    "Emma",
    "Olivia",
    "Sofía",
    "Ingrid",
];
pub(super) const GIVEN_NEUTRAL: &[&str] = &[
    "Alex", "Sam", "Taylor", "Jordan", "Casey", "Riley", "Robin", "Quinn",
];

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Gender {
    Male,
    Female,
    Other,
    Unknown,
}

impl Gender {
    pub(super) fn code(self) -> &'static str {
        match self {
            Gender::Male => "male",
            Gender::Female => "female",
            Gender::Other => "other",
            Gender::Unknown => "unknown",
        }
    }

    pub(super) fn given(self) -> &'static [&'static str] {
        match self {
            Gender::Male => GIVEN_MALE,
            Gender::Female => GIVEN_FEMALE,
            Gender::Other | Gender::Unknown => GIVEN_NEUTRAL,
        }
    }
}

pub(super) const GENDERS: &[(Gender, u32)] = &[
    (Gender::Male, 48),
    (Gender::Female, 48),
    (Gender::Other, 2),
    (Gender::Unknown, 2),
];

pub(super) const MARITAL: &[(&str, &str)] = &[
    ("M", "Married"),
    ("S", "Never Married"),
    ("D", "Divorced"),
    ("W", "Widowed"),
];

pub(super) const LANGUAGES: &[(&str, &str)] = &[
    ("en-US", "English (United States)"),
    ("es", "Spanish"),
    ("de", "German"),
    ("pt", "Portuguese"),
];

#[derive(Clone, Copy)]
pub(super) enum Category {
    Vital,
    Lab,
    Social,
}

impl Category {
    pub(super) fn coding(self) -> (&'static str, &'static str) {
        match self {
            Category::Vital => ("vital-signs", "Vital Signs"),
            Category::Lab => ("laboratory", "Laboratory"),
            Category::Social => ("social-history", "Social History"),
        }
    }
}

pub(super) enum ObsValue {
    /// Unit, UCUM code, range of the value scaled by `10^decimals`, decimals, and the normal
    /// range as written.
    Quantity {
        unit: &'static str,
        ucum: &'static str,
        lo: u64,
        hi: u64,
        decimals: u32,
        normal: Option<(&'static str, &'static str)>,
    },
    Smoking,
}

pub(super) struct ObsKind {
    pub(super) code: &'static str,
    pub(super) display: &'static str,
    pub(super) category: Category,
    pub(super) profile: &'static str,
    pub(super) value: ObsValue,
}

#[allow(clippy::too_many_arguments)]
const fn quantity(
    code: &'static str,
    display: &'static str,
    category: Category,
    profile: &'static str,
    unit: &'static str,
    ucum: &'static str,
    (lo, hi, decimals): (u64, u64, u32),
    normal: Option<(&'static str, &'static str)>,
) -> ObsKind {
    ObsKind {
        code,
        display,
        category,
        profile,
        value: ObsValue::Quantity {
            unit,
            ucum,
            lo,
            hi,
            decimals,
            normal,
        },
    }
}

pub(super) const OBSERVATIONS: &[ObsKind] = &[
    quantity(
        "8867-4",
        "Heart rate",
        Category::Vital,
        "us-core-heart-rate",
        "/min",
        "/min",
        (48, 120, 0),
        None,
    ),
    quantity(
        "8480-6",
        "Systolic blood pressure",
        Category::Vital,
        "us-core-vital-signs",
        "mmHg",
        "mm[Hg]",
        (95, 175, 0),
        None,
    ),
    quantity(
        "8462-4",
        "Diastolic blood pressure",
        Category::Vital,
        "us-core-vital-signs",
        "mmHg",
        "mm[Hg]",
        (55, 105, 0),
        None,
    ),
    quantity(
        "29463-7",
        "Body weight",
        Category::Vital,
        "us-core-body-weight",
        "kg",
        "kg",
        (30, 1450, 1),
        None,
    ),
    quantity(
        "8302-2",
        "Body height",
        Category::Vital,
        "us-core-body-height",
        "cm",
        "cm",
        (500, 2000, 1),
        None,
    ),
    quantity(
        "8310-5",
        "Body temperature",
        Category::Vital,
        "us-core-body-temperature",
        "Cel",
        "Cel",
        (358, 395, 1),
        None,
    ),
    quantity(
        "2339-0",
        "Glucose [Mass/volume] in Blood",
        Category::Lab,
        "us-core-observation-lab",
        "mg/dL",
        "mg/dL",
        (650, 2500, 1),
        Some(("70", "99")),
    ),
    quantity(
        "2093-3",
        "Cholesterol [Mass/volume] in Serum or Plasma",
        Category::Lab,
        "us-core-observation-lab",
        "mg/dL",
        "mg/dL",
        (120, 310, 0),
        Some(("0", "200")),
    ),
    quantity(
        "718-7",
        "Hemoglobin [Mass/volume] in Blood",
        Category::Lab,
        "us-core-observation-lab",
        "g/dL",
        "g/dL",
        (85, 185, 1),
        Some(("12.0", "17.5")),
    ),
    ObsKind {
        code: "72166-2",
        display: "Tobacco smoking status",
        category: Category::Social,
        profile: "us-core-smokingstatus",
        value: ObsValue::Smoking,
    },
];

pub(super) const SMOKING: &[(&str, &str)] = &[
    ("266919005", "Never smoker"),
    ("8517006", "Ex-smoker"),
    ("449868002", "Smokes tobacco daily"),
];

pub(super) const CONDITIONS: &[(&str, &str)] = &[
    ("44054006", "Diabetes mellitus type 2"),
    ("38341003", "Hypertensive disorder, systemic arterial"),
    ("55822004", "Hyperlipidemia"),
    ("195662009", "Acute viral pharyngitis"),
    ("10509002", "Acute bronchitis"),
    ("444814009", "Viral sinusitis"),
    ("40055000", "Chronic sinusitis"),
    ("233604007", "Pneumonia"),
    ("49436004", "Atrial fibrillation"),
    ("195967001", "Asthma"),
    ("271737000", "Anemia"),
    ("162864005", "Body mass index 30+ - obesity"),
    ("239873007", "Osteoarthritis of knee"),
];

pub(super) const MEDICATIONS: &[(&str, &str)] = &[
    ("314076", "lisinopril 10 MG Oral Tablet"),
    (
        "860975",
        "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet",
    ),
    ("197361", "amlodipine 5 MG Oral Tablet"),
    ("259255", "atorvastatin 80 MG Oral Tablet"),
    ("308182", "amoxicillin 250 MG Oral Capsule"),
    ("310965", "ibuprofen 200 MG Oral Tablet"),
    ("313782", "acetaminophen 325 MG Oral Tablet"),
    (
        "895994",
        "120 ACTUAT fluticasone propionate 0.044 MG/ACTUAT Metered Dose Inhaler",
    ),
    ("834060", "penicillin V potassium 250 MG Oral Tablet"),
];

/// Dosage text, frequency per day.
pub(super) const DOSAGES: &[(&str, u32)] = &[
    ("Take 1 tablet by mouth once daily", 1),
    ("Take 1 tablet by mouth twice daily", 2),
    ("Take 1 tablet by mouth three times daily", 3),
];

pub(super) const PROCEDURES: &[(&str, &str)] = &[
    ("430193006", "Medication reconciliation"),
    ("710824005", "Assessment of health and social care needs"),
    ("171207006", "Depression screening"),
    ("73761001", "Colonoscopy"),
    ("117015009", "Throat culture"),
    ("399208008", "Plain chest X-ray"),
    ("162676008", "Brief general examination"),
    ("76601001", "Intramuscular injection"),
];

pub(super) const VACCINES: &[(&str, &str)] = &[
    ("140", "Influenza, seasonal, injectable, preservative free"),
    ("08", "Hep B, adolescent or pediatric"),
    ("133", "Pneumococcal conjugate PCV 13"),
    ("113", "Td (adult) preservative free"),
    ("115", "Tdap"),
    ("62", "HPV, quadrivalent"),
    ("03", "MMR"),
    ("21", "varicella"),
    ("10", "IPV"),
    ("20", "DTaP"),
    (
        "208",
        "SARS-COV-2 (COVID-19) vaccine, mRNA, 30 mcg/0.3mL dose",
    ),
];

/// Code, display, category.
pub(super) const ALLERGIES: &[(&str, &str, &str)] = &[
    ("91936005", "Allergy to penicillin", "medication"),
    ("300913006", "Shellfish allergy", "food"),
    ("91935009", "Allergy to peanuts", "food"),
    ("417532002", "Allergy to fish", "food"),
    ("714035009", "Allergy to soya", "food"),
    ("232347008", "Dander (animal) allergy", "environment"),
    ("232350006", "House dust mite allergy", "environment"),
    ("419474003", "Allergy to mould", "environment"),
];

pub(super) const PANELS: &[(&str, &str)] = &[
    (
        "24323-8",
        "Comprehensive metabolic 2000 panel - Serum or Plasma",
    ),
    ("57698-3", "Lipid panel with direct LDL - Serum or Plasma"),
    ("58410-2", "CBC panel - Blood by Automated count"),
    ("51990-0", "Basic metabolic panel - Blood"),
    ("24356-8", "Urinalysis complete panel - Urine"),
];

#[derive(Clone, Copy)]
pub(super) enum Class {
    Ambulatory,
    Emergency,
    Inpatient,
}

pub(super) const CLASSES: &[(Class, u32)] = &[
    (Class::Ambulatory, 70),
    (Class::Emergency, 15),
    (Class::Inpatient, 15),
];

impl Class {
    pub(super) fn coding(self) -> (&'static str, &'static str) {
        match self {
            Class::Ambulatory => ("AMB", "ambulatory"),
            Class::Emergency => ("EMER", "emergency"),
            Class::Inpatient => ("IMP", "inpatient encounter"),
        }
    }

    pub(super) fn types(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Class::Ambulatory => &[
                ("185349003", "Encounter for check up"),
                ("185345009", "Encounter for symptom"),
                ("390906007", "Follow-up encounter"),
            ],
            Class::Emergency => &[("50849002", "Emergency room admission")],
            Class::Inpatient => &[
                ("32485007", "Hospital admission"),
                ("183452005", "Emergency hospital admission"),
            ],
        }
    }

    /// Shortest and longest stay.
    pub(super) fn duration(self) -> (i64, i64) {
        match self {
            Class::Ambulatory => (15 * MINUTE, 90 * MINUTE),
            Class::Emergency => (HOUR, 10 * HOUR),
            Class::Inpatient => (DAY, 10 * DAY),
        }
    }
}
