package main

import (
	"bytes"
	"errors"
	"flag"
	"strings"
	"testing"

	"github.com/keyfence/keyfence/proxy/tenants"
)

func TestHashPassword(t *testing.T) {
	tests := []struct {
		name, stdin string
		args        []string
		want        string // the password the printed hash verifies; "" with wantErr
		wantErr     string
	}{
		{name: "line", stdin: "s3cret pw\n", want: "s3cret pw"},
		{name: "CRLF and what follows the line", stdin: "s3cret\r\nnext line\n", want: "s3cret"},
		{name: "no newline; blanks kept", stdin: " sp ", want: " sp "},
		{name: "empty", stdin: "", wantErr: "hash-password: empty password"},
		{name: "newline only", stdin: "\r\n", wantErr: "hash-password: empty password"},
		{name: "too long", stdin: strings.Repeat("x", maxPasswordBytes+1) + "\n", wantErr: "hash-password: longer than 4096 bytes"},
		{name: "password as argument", args: []string{"s3cret"}, stdin: "x\n", wantErr: "never taken as an argument"},
		{name: "unknown flag", args: []string{"--cost", "3"}, stdin: "x\n", wantErr: "flag provided but not defined"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := runHashPassword(tc.args, strings.NewReader(tc.stdin), &out, &errOut)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				if out.Len() != 0 {
					t.Errorf("stdout %q on an error", out.String())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			line := out.String()
			if strings.Count(line, "\n") != 1 || !strings.HasSuffix(line, "\n") || !strings.HasPrefix(line, "$argon2id$v=19$m=19456,t=2,p=1$") {
				t.Fatalf("stdout %q: want one argon2id hash and a newline", line)
			}
			hash := strings.TrimSuffix(line, "\n")
			if !tenants.VerifyPassword(hash, []byte(tc.want)) {
				t.Errorf("the hash does not verify %q", tc.want)
			}
			if tenants.VerifyPassword(hash, []byte(tc.stdin)) && tc.stdin != tc.want {
				t.Errorf("the hash verifies the untrimmed %q", tc.stdin)
			}
			if errOut.Len() != 0 || strings.Contains(line, tc.want) {
				t.Errorf("the password shows: stdout %q, stderr %q", line, errOut.String())
			}
		})
	}
}

func TestHashPasswordHelp(t *testing.T) {
	var out bytes.Buffer
	err := runHashPassword([]string{"--help"}, strings.NewReader(""), &out, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	for _, want := range []string{"Usage: keyfence hash-password", "stdin", "argon2id", "password_hash", "--tenants-file"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("hash-password --help lacks %q", want)
		}
	}
}
