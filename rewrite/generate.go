package rewrite

// The command table (table_gen.go) is generated from the COMMAND INFO
// captured in commands.json and the rules in internal/gen/policy.go.
//go:generate go run ./internal/gen
