//! Lists a template can change, as Python's are. Jinja templates built for
//! transformers call `append` and `pop` on a list kept in a `namespace`
//! (Kimi-K2-Thinking queues its tool-call ids that way); minijinja's own
//! lists cannot change. So `namespace(...)` here keeps each list it is
//! given as a [`MutableList`], which answers `append`, `extend`, `insert`,
//! `pop`, `remove` and `clear` and otherwise reads like any list.

use std::sync::{Arc, Mutex};

use minijinja::value::{Enumerator, Object, ObjectRepr, Value, ValueKind, ValueOrKwargs};
use minijinja::{Error, ErrorKind, State};

/// A list whose items the template may change.
#[derive(Debug, Default)]
pub(crate) struct MutableList(Mutex<Vec<Value>>);

impl MutableList {
    fn items(&self) -> std::sync::MutexGuard<'_, Vec<Value>> {
        // A poisoned lock still holds a usable list.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into())
}

/// A Python index (negative counts from the end) into a list of `len`.
fn index(value: &Value, len: usize, allow_end: bool) -> Result<usize, Error> {
    let i = i64::try_from(value.clone()).map_err(|_| invalid("list indices must be integers"))?;
    let i = if i < 0 { i + len as i64 } else { i };
    let max = if allow_end {
        len as i64
    } else {
        len as i64 - 1
    };
    if i < 0 || i > max {
        if allow_end {
            return Ok(if i < 0 { 0 } else { len });
        }
        return Err(invalid("list index out of range"));
    }
    Ok(i as usize)
}

impl Object for MutableList {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Seq
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let items = self.items();
        let i = index(key, items.len(), false).ok()?;
        items.get(i).cloned()
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.items().clone())
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &mut State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, Error> {
        let mut items = self.items();
        match (method, args) {
            ("append", [v]) => items.push(v.clone()),
            ("extend", [more]) => items.extend(more.try_iter()?),
            ("insert", [at, v]) => {
                let at = index(at, items.len(), true)?;
                items.insert(at, v.clone());
            }
            ("pop", []) => return items.pop().ok_or_else(|| invalid("pop from empty list")),
            ("pop", [at]) => {
                let at = index(at, items.len(), false)?;
                return Ok(items.remove(at));
            }
            ("remove", [v]) => {
                let at = items
                    .iter()
                    .position(|x| x == v)
                    .ok_or_else(|| invalid("list.remove(x): x not in list"))?;
                items.remove(at);
            }
            ("clear", []) => items.clear(),
            ("index", [v]) => {
                return items
                    .iter()
                    .position(|x| x == v)
                    .map(Value::from)
                    .ok_or_else(|| invalid("value is not in list"))
            }
            ("count", [v]) => return Ok(Value::from(items.iter().filter(|x| *x == v).count())),
            _ => return Err(Error::from(ErrorKind::UnknownMethod)),
        }
        Ok(Value::from(()))
    }
}

/// Jinja's `namespace(...)`, its lists kept as [`MutableList`]s.
pub(crate) fn namespace(defaults: Option<ValueOrKwargs>) -> Result<Value, Error> {
    let Some(defaults) = defaults else {
        return minijinja::functions::namespace(None);
    };
    let defaults = defaults.into_value();
    if defaults.kind() != ValueKind::Map {
        // The built-in's own error.
        return minijinja::functions::namespace(Some(ValueOrKwargs::from(defaults)));
    }
    let mut entries = std::collections::BTreeMap::new();
    for key in defaults.try_iter()? {
        let value = defaults.get_item(&key)?;
        let value = if value.kind() == ValueKind::Seq {
            Value::from_object(MutableList(Mutex::new(value.try_iter()?.collect())))
        } else {
            value
        };
        entries.insert(key.to_string(), value);
    }
    minijinja::functions::namespace(Some(ValueOrKwargs::from(Value::from(entries))))
}
