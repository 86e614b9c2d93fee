//! XEP-0004 data forms, read once: every module that takes a submitted form
//! (publish-options, node configuration, MAM queries, ad-hoc commands,
//! XEP-0357 enable) reads it through [`Form::read`].

use super::ns::DATA;
use minidom::Element;

/// One field of a submitted form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub var: String,
    pub values: Vec<String>,
}

/// A submitted form: its `FORM_TYPE` and the other fields, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    pub form_type: Option<String>,
    pub fields: Vec<Field>,
}

impl Form {
    /// Read an `<x xmlns='jabber:x:data'/>` element. Fields without `var`
    /// are skipped; `FORM_TYPE` is taken out of the field list.
    pub fn read(x: &Element) -> Form {
        let mut form = Form::default();
        for f in x.children().filter(|c| c.name() == "field") {
            let Some(var) = f.attr("var") else { continue };
            let values: Vec<String> = f.children().filter(|v| v.name() == "value").map(|v| v.text()).collect();
            if var == "FORM_TYPE" {
                form.form_type = values.into_iter().next();
            } else {
                form.fields.push(Field {
                    var: var.to_string(),
                    values,
                });
            }
        }
        form
    }

    /// The form child (`<x xmlns='jabber:x:data'/>`) of `parent`, read.
    pub fn child_of(parent: &Element) -> Option<Form> {
        parent.get_child("x", DATA).map(Form::read)
    }

    /// Whether the form's `FORM_TYPE` is `t`, or it has none (some clients
    /// leave it out).
    pub fn is_type_or_untyped(&self, t: &str) -> bool {
        self.form_type.as_deref().is_none_or(|f| f == t)
    }

    /// The first value of `var`, trimmed; `None` when absent or empty.
    pub fn value(&self, var: &str) -> Option<&str> {
        self.values(var).first().map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    /// Every value of `var` (empty when absent).
    pub fn values(&self, var: &str) -> &[String] {
        self.fields
            .iter()
            .find(|f| f.var == var)
            .map(|f| f.values.as_slice())
            .unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_type_fields_and_values() {
        let x: Element = "<x xmlns='jabber:x:data' type='submit'>\
            <field var='FORM_TYPE' type='hidden'><value>urn:t</value></field>\
            <field var='a'><value> one </value></field>\
            <field var='m'><value>x</value><value>y</value></field>\
            <field var='empty'><value></value></field>\
            <field><value>no var</value></field></x>"
            .parse()
            .unwrap();
        let f = Form::read(&x);
        assert_eq!(f.form_type.as_deref(), Some("urn:t"));
        assert!(f.is_type_or_untyped("urn:t"));
        assert!(!f.is_type_or_untyped("urn:other"));
        assert_eq!(f.value("a"), Some("one"));
        assert_eq!(f.values("m"), ["x", "y"]);
        assert_eq!(f.value("empty"), None);
        assert_eq!(f.value("missing"), None);
        assert_eq!(f.fields.len(), 3);
    }
}
