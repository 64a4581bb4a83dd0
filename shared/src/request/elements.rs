//! `_elements`: syntax of one selector, `Type.element` or `element`.

use serde::{Deserialize, Serialize};

use crate::model::ResourceType;

/// One `_elements` entry. Without a type it applies to every exported type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElementSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<ResourceType>,
    pub element: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElementSyntaxError {
    #[error("`{0}` is not of the form `ResourceType.element` or `element`")]
    Malformed(String),
    #[error("`{0}` names an element below the root; only root elements are permitted")]
    NotRoot(String),
    #[error("`{0}` in `{1}` is not a FHIR R4 resource type")]
    UnknownType(String, String),
}

fn is_element_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl ElementSelector {
    pub fn parse(value: &str) -> Result<ElementSelector, ElementSyntaxError> {
        let parts: Vec<&str> = value.split('.').collect();
        match parts.as_slice() {
            [element] if is_element_name(element) => Ok(ElementSelector {
                resource_type: None,
                element: (*element).to_owned(),
            }),
            [ty, element] if ty.starts_with(|c: char| c.is_ascii_uppercase()) => {
                let resource_type = ResourceType::parse(ty).map_err(|_| {
                    ElementSyntaxError::UnknownType((*ty).to_owned(), value.to_owned())
                })?;
                if !is_element_name(element) {
                    return Err(ElementSyntaxError::Malformed(value.to_owned()));
                }
                Ok(ElementSelector {
                    resource_type: Some(resource_type),
                    element: (*element).to_owned(),
                })
            }
            [first, ..] if parts.len() > 2 || is_element_name(first) => {
                Err(ElementSyntaxError::NotRoot(value.to_owned()))
            }
            _ => Err(ElementSyntaxError::Malformed(value.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let s = ElementSelector::parse("Patient.birthDate").expect("ok");
        assert_eq!(s.resource_type.map(|t| t.as_str()), Some("Patient"));
        assert_eq!(s.element, "birthDate");
        assert_eq!(
            ElementSelector::parse("status").expect("ok").resource_type,
            None
        );
        assert!(matches!(
            ElementSelector::parse("Patient.name.given"),
            Err(ElementSyntaxError::NotRoot(_))
        ));
        assert!(matches!(
            ElementSelector::parse("code.coding"),
            Err(ElementSyntaxError::NotRoot(_))
        ));
        assert!(matches!(
            ElementSelector::parse("Foo.bar"),
            Err(ElementSyntaxError::UnknownType(..))
        ));
        assert!(matches!(
            ElementSelector::parse(""),
            Err(ElementSyntaxError::Malformed(_))
        ));
        assert!(matches!(
            ElementSelector::parse("a b"),
            Err(ElementSyntaxError::Malformed(_))
        ));
    }
}
