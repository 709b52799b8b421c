//! The check that keeps NaN and infinities out of serde_json's value conversion, which would
//! turn them into `null` (and so into the key of a different parameter set).

use std::fmt;

use serde::ser::{self, Serialize};

/// Why [`FiniteCheck`] rejected a parameter set.
#[derive(Debug)]
pub(super) enum CheckError {
    NonFinite,
    Custom(String),
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::NonFinite => f.write_str(
                "parameters contain a NaN or infinite float, which JSON cannot represent",
            ),
            CheckError::Custom(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for CheckError {}

impl ser::Error for CheckError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        CheckError::Custom(msg.to_string())
    }
}

/// A serializer that produces nothing and fails on the first non-finite float.
///
/// serde_json's value serializer replaces NaN and infinities with `null`, so this pass is the
/// only way to tell `f64::NAN` from `None` in the parameters.
#[derive(Clone, Copy)]
pub(super) struct FiniteCheck;

type CheckResult = std::result::Result<(), CheckError>;

impl ser::Serializer for FiniteCheck {
    type Ok = ();
    type Error = CheckError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(self, _: bool) -> CheckResult {
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> CheckResult {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> CheckResult {
        Ok(())
    }
    fn serialize_i32(self, _: i32) -> CheckResult {
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> CheckResult {
        Ok(())
    }
    fn serialize_i128(self, _: i128) -> CheckResult {
        Ok(())
    }
    fn serialize_u8(self, _: u8) -> CheckResult {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> CheckResult {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> CheckResult {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> CheckResult {
        Ok(())
    }
    fn serialize_u128(self, _: u128) -> CheckResult {
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> CheckResult {
        if v.is_finite() {
            Ok(())
        } else {
            Err(CheckError::NonFinite)
        }
    }
    fn serialize_f64(self, v: f64) -> CheckResult {
        if v.is_finite() {
            Ok(())
        } else {
            Err(CheckError::NonFinite)
        }
    }
    fn serialize_char(self, _: char) -> CheckResult {
        Ok(())
    }
    fn serialize_str(self, _: &str) -> CheckResult {
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> CheckResult {
        Ok(())
    }
    fn serialize_none(self) -> CheckResult {
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> CheckResult {
        value.serialize(self)
    }
    fn serialize_unit(self) -> CheckResult {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> CheckResult {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> CheckResult {
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> CheckResult {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> CheckResult {
        value.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> std::result::Result<Self, CheckError> {
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> std::result::Result<Self, CheckError> {
        Ok(self)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self, CheckError> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self, CheckError> {
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> std::result::Result<Self, CheckError> {
        Ok(self)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> std::result::Result<Self, CheckError> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self, CheckError> {
        Ok(self)
    }
}

impl ser::SerializeSeq for FiniteCheck {
    type Ok = ();
    type Error = CheckError;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> CheckResult {
        value.serialize(*self)
    }
    fn end(self) -> CheckResult {
        Ok(())
    }
}

impl ser::SerializeTuple for FiniteCheck {
    type Ok = ();
    type Error = CheckError;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> CheckResult {
        value.serialize(*self)
    }
    fn end(self) -> CheckResult {
        Ok(())
    }
}

impl ser::SerializeTupleStruct for FiniteCheck {
    type Ok = ();
    type Error = CheckError;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> CheckResult {
        value.serialize(*self)
    }
    fn end(self) -> CheckResult {
        Ok(())
    }
}

impl ser::SerializeTupleVariant for FiniteCheck {
    type Ok = ();
    type Error = CheckError;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> CheckResult {
        value.serialize(*self)
    }
    fn end(self) -> CheckResult {
        Ok(())
    }
}

impl ser::SerializeMap for FiniteCheck {
    type Ok = ();
    type Error = CheckError;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> CheckResult {
        key.serialize(*self)
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> CheckResult {
        value.serialize(*self)
    }
    fn end(self) -> CheckResult {
        Ok(())
    }
}

impl ser::SerializeStruct for FiniteCheck {
    type Ok = ();
    type Error = CheckError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        _: &'static str,
        value: &T,
    ) -> CheckResult {
        value.serialize(*self)
    }
    fn end(self) -> CheckResult {
        Ok(())
    }
}

impl ser::SerializeStructVariant for FiniteCheck {
    type Ok = ();
    type Error = CheckError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        _: &'static str,
        value: &T,
    ) -> CheckResult {
        value.serialize(*self)
    }
    fn end(self) -> CheckResult {
        Ok(())
    }
}
