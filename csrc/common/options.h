// Expansions of an op family's keyword-option X-macro (X(C++ parameter type, name, schema type, schema default),
// e.g. PE_SINUSOIDAL_OPTIONS): a schema tail (", float base=10000.0, ..."), a parameter list and an argument list to
// append after the positional ones, and the fields and initializer of an options struct.
#pragma once

#define PE_OPTION_SCHEMA(cpp_type, name, schema_type, schema_default) ", " schema_type " " #name "=" schema_default
#define PE_OPTION_PARAM(cpp_type, name, ...) , cpp_type name
#define PE_OPTION_ARG(cpp_type, name, ...) , name
#define PE_OPTION_FIELD(cpp_type, name, ...) cpp_type name;
#define PE_OPTION_INIT(cpp_type, name, ...) name,
