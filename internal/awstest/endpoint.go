package awstest

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Names of the environment variables (and .emulators/env keys) holding the emulator
// endpoints, such as "http://127.0.0.1:4568".
const (
	KinesisEndpointEnv  = "SHARDFLOW_KINESIS_ENDPOINT"
	DynamoDBEndpointEnv = "SHARDFLOW_DYNAMODB_ENDPOINT"
)

// envFileRel is where scripts/emulators.sh writes the endpoints, relative to the module root.
const envFileRel = ".emulators/env"

// startHint tells a reader how to get the emulators running.
const startHint = "start them with `scripts/emulators.sh start` (or `make test`), " +
	"or set " + KinesisEndpointEnv + " and " + DynamoDBEndpointEnv

// KinesisEndpoint returns the base URL of the Kinesis emulator. It skips the test when no
// emulator is configured, or fails it when the CI environment variable is non-empty; it
// fails the test when the endpoint is not a loopback URL or does not accept connections.
// See the package documentation for where the endpoint is looked up.
func KinesisEndpoint(t testing.TB) string {
	t.Helper()
	return endpoint(t, "Kinesis", KinesisEndpointEnv)
}

// DynamoDBEndpoint returns the base URL of the DynamoDB emulator, with the same lookup,
// skip and failure rules as [KinesisEndpoint].
func DynamoDBEndpoint(t testing.TB) string {
	t.Helper()
	return endpoint(t, "DynamoDB", DynamoDBEndpointEnv)
}

func endpoint(t testing.TB, service, key string) string {
	t.Helper()
	value, source, err := lookup(key)
	if err != nil {
		t.Fatalf("awstest: looking up the %s emulator endpoint: %v", service, err)
	}
	if value == "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("awstest: no %s emulator configured and CI is set, so this is a failure, not a skip: "+
				"%s is empty and no %s was found; %s", service, key, envFileRel, startHint)
		}
		t.Skipf("!!! SKIPPING integration test: no %s emulator configured (%s is empty and no %s was found); %s !!!",
			service, key, envFileRel, startHint)
	}
	if err := CheckLoopback(value); err != nil {
		t.Fatalf("awstest: %s endpoint from %s: %v", service, source, err)
	}
	if err := dial(value); err != nil {
		t.Fatalf("awstest: %s emulator at %s (from %s) is not answering: %v; is it still running? "+
			"check `scripts/emulators.sh status`, or %s",
			service, value, source, err, startHint)
	}
	return value
}

// lookup returns the value of key from the environment, else from the nearest
// .emulators/env file, with a description of where it came from. An empty value and
// nil error mean "not configured".
func lookup(key string) (value, source string, err error) {
	if v := strings.TrimSpace(os.Getenv(key)); v != "" {
		return v, "environment variable " + key, nil
	}
	path, err := findEnvFile()
	if err != nil || path == "" {
		return "", "", err
	}
	vars, err := readEnvFile(path)
	if err != nil {
		return "", "", err
	}
	return vars[key], path, nil
}

// findEnvFile walks up from the working directory to the module root (the first
// directory holding go.mod) and returns the first .emulators/env it sees, or "".
func findEnvFile() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("get working directory: %w", err)
	}
	for {
		candidate := filepath.Join(dir, filepath.FromSlash(envFileRel))
		if _, err := os.Stat(candidate); err == nil {
			return candidate, nil
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("stat %s: %w", candidate, err)
		}
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return "", nil // module root reached
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", nil
		}
		dir = parent
	}
}

// readEnvFile parses the shell-sourceable KEY=VALUE lines written by
// scripts/emulators.sh. Blank lines, comments and an "export " prefix are allowed.
func readEnvFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open emulator env file: %w", err)
	}
	defer f.Close()
	vars := make(map[string]string)
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s:%d: want KEY=VALUE, got %q", path, n, line)
		}
		v = strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		vars[strings.TrimSpace(k)] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return vars, nil
}

// CheckLoopback returns an error unless endpoint is an http or https URL whose host is
// a loopback address (127.0.0.0/8, ::1) or "localhost". Tests must never send traffic
// anywhere else.
func CheckLoopback(endpoint string) error {
	u, err := url.Parse(endpoint)
	if err != nil {
		return fmt.Errorf("parse endpoint %q: %w", endpoint, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("endpoint %q: scheme must be http or https", endpoint)
	}
	if u.User != nil {
		return fmt.Errorf("endpoint %q: must not contain user info", endpoint)
	}
	host := u.Hostname()
	if strings.EqualFold(host, "localhost") {
		return nil
	}
	addr, err := netip.ParseAddr(host)
	if err != nil || !addr.Unmap().IsLoopback() || addr.Zone() != "" {
		return fmt.Errorf("endpoint %q: host %q is not a loopback address (127.0.0.0/8, ::1 or localhost); "+
			"refusing to send test traffic there", endpoint, host)
	}
	return nil
}

// dial checks that something accepts TCP connections at the endpoint, so a stale
// .emulators/env gives one clear message instead of a retry storm of connection errors.
func dial(endpoint string) error {
	u, err := url.Parse(endpoint)
	if err != nil {
		return err
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(u.Hostname(), port), 2*time.Second)
	if err != nil {
		return err
	}
	return conn.Close()
}
