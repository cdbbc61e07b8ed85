package awstest

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestCheckLoopback(t *testing.T) {
	t.Parallel()
	tests := []struct {
		endpoint string
		ok       bool
	}{
		{"http://127.0.0.1:4568", true},
		{"http://127.3.4.5:4568", true},
		{"https://localhost:4567", true},
		{"http://LOCALHOST", true},
		{"http://[::1]:8000", true},
		{"http://[::ffff:127.0.0.1]:8000", true},
		{"http://10.0.0.1:4568", false},
		{"http://0.0.0.0:4568", false},
		{"http://[::]:4568", false},
		{"https://kinesis.us-east-1.amazonaws.com", false},
		{"http://localhost.example.com:4568", false},
		{"http://127.0.0.1.nip.io:4568", false},
		{"http://user:pw@127.0.0.1:4568", false},
		{"ftp://127.0.0.1:4568", false},
		{"127.0.0.1:4568", false},
		{"", false},
	}
	for _, tc := range tests {
		t.Run(tc.endpoint, func(t *testing.T) {
			err := CheckLoopback(tc.endpoint)
			if got := err == nil; got != tc.ok {
				t.Errorf("CheckLoopback(%q) = %v, want ok=%v", tc.endpoint, err, tc.ok)
			}
		})
	}
}

func TestUniqueNameIsValidForStreamsAndTablesAndDiffersEachCall(t *testing.T) {
	t.Parallel()
	valid := regexp.MustCompile(`^[a-zA-Z0-9_.-]{3,128}$`)
	long := strings.Repeat("x", 300)
	seen := make(map[string]bool)
	for _, prefix := range []string{"stream", "", "bad prefix/with:chars", long} {
		for range 3 {
			name := UniqueName(t, prefix)
			if !valid.MatchString(name) {
				t.Errorf("UniqueName(t, %.20q...) = %q, not a valid stream/table name", prefix, name)
			}
			if seen[name] {
				t.Errorf("UniqueName returned %q twice", name)
			}
			seen[name] = true
		}
	}
}

// fakeTB records Skipf and Fatalf and stops the helper the way testing does, so the
// skip-or-fail policy of endpoint can be tested without skipping or failing this test.
type fakeTB struct {
	testing.TB
	skipped, failed string
}

type stopped struct{}

func (*fakeTB) Helper() {}
func (f *fakeTB) Skipf(format string, args ...any) {
	f.skipped = fmt.Sprintf(format, args...)
	panic(stopped{})
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = fmt.Sprintf(format, args...)
	panic(stopped{})
}

func callKinesisEndpoint(f *fakeTB) (got string) {
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(stopped); !ok {
				panic(r)
			}
		}
	}()
	return KinesisEndpoint(f)
}

// These subtests change the environment and working directory, so none is parallel.
func TestKinesisEndpointLookupAndPolicy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	live := "http://" + ln.Addr().String()

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + closed.Addr().String()
	closed.Close()

	tests := []struct {
		name    string
		ci      string
		env     string
		file    string // contents of <module root>/.emulators/env; "" means no file
		want    string
		skipped string // substring of the Skipf message
		failed  string // substring of the Fatalf message
	}{
		{
			name:    "nothing configured outside CI skips loudly",
			skipped: "SKIPPING integration test: no Kinesis emulator configured",
		},
		{
			name:   "nothing configured in CI fails",
			ci:     "true",
			failed: "CI is set, so this is a failure",
		},
		{
			name: "environment variable is used",
			env:  live,
			want: live,
		},
		{
			name: "env file found by walking up to the module root is used",
			file: "# written by scripts/emulators.sh\nSHARDFLOW_KINESIS_ENDPOINT=" + live + "\nSHARDFLOW_DYNAMODB_ENDPOINT=http://127.0.0.1:1\n",
			want: live,
		},
		{
			name: "environment variable wins over env file",
			env:  live,
			file: "SHARDFLOW_KINESIS_ENDPOINT=" + dead + "\n",
			want: live,
		},
		{
			name:    "env file without the key skips",
			file:    "SHARDFLOW_DYNAMODB_ENDPOINT=" + live + "\n",
			skipped: "SKIPPING",
		},
		{
			name:   "non-loopback endpoint fails even outside CI",
			env:    "https://kinesis.us-east-1.amazonaws.com",
			failed: "not a loopback address",
		},
		{
			name:   "endpoint that does not answer fails",
			file:   "SHARDFLOW_KINESIS_ENDPOINT=" + dead + "\n",
			failed: "is not answering",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			writeFile(t, filepath.Join(root, "go.mod"), "module example.com/m\n")
			if tc.file != "" {
				writeFile(t, filepath.Join(root, ".emulators", "env"), tc.file)
			}
			pkg := filepath.Join(root, "a", "b")
			if err := os.MkdirAll(pkg, 0o755); err != nil {
				t.Fatal(err)
			}
			t.Chdir(pkg)
			t.Setenv("CI", tc.ci)
			t.Setenv(KinesisEndpointEnv, tc.env)

			f := &fakeTB{}
			got := callKinesisEndpoint(f)
			if got != tc.want {
				t.Errorf("KinesisEndpoint = %q, want %q", got, tc.want)
			}
			if !contains(f.skipped, tc.skipped) {
				t.Errorf("Skipf message = %q, want one containing %q", f.skipped, tc.skipped)
			}
			if !contains(f.failed, tc.failed) {
				t.Errorf("Fatalf message = %q, want one containing %q", f.failed, tc.failed)
			}
		})
	}
}

// contains reports whether s contains sub, where an empty sub requires an empty s.
func contains(s, sub string) bool {
	if sub == "" {
		return s == ""
	}
	return strings.Contains(s, sub)
}

func writeFile(t *testing.T, path, contents string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(contents), 0o644); err != nil {
		t.Fatal(err)
	}
}
