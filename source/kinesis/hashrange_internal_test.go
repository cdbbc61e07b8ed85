package kinesissource

import (
	"crypto/md5"
	"math/big"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/shardflow/shardflow/internal/kpl"
)

func bigOf(k hashKey) *big.Int {
	b := new(big.Int).SetUint64(k.hi)
	return b.Lsh(b, 64).Or(b, new(big.Int).SetUint64(k.lo))
}

func TestParseHashKey(t *testing.T) {
	max := "340282366920938463463374607431768211455" // 2^128-1
	for _, s := range []string{"0", "1", "9", "18446744073709551615", "18446744073709551616",
		"170141183460469231731687303715884105728", max, "000123", "99999999999999999999999999999999999999"} {
		k, ok := parseHashKey(s)
		want, _ := new(big.Int).SetString(s, 10)
		if !ok || bigOf(k).Cmp(want) != 0 {
			t.Errorf("parseHashKey(%q) = %v, %v; want %v", s, bigOf(k), ok, want)
		}
	}
	for _, s := range []string{"", "-1", "+1", "1e5", " 1", "0x10", "340282366920938463463374607431768211456",
		"3402823669209384634633746074317682114550", "999999999999999999999999999999999999999"} {
		if k, ok := parseHashKey(s); ok {
			t.Errorf("parseHashKey(%q) = %v; want a refusal", s, bigOf(k))
		}
	}
}

func TestHashRangeContains(t *testing.T) {
	r := shardHashRange(&types.HashKeyRange{StartingHashKey: aws.String("100"), EndingHashKey: aws.String("200")})
	for _, tc := range []struct {
		ehk  string
		want bool
	}{{"99", false}, {"100", true}, {"150", true}, {"200", true}, {"201", false}, {"not a number", false}} {
		if got := r.contains(&kpl.Record{PartitionKey: "k", ExplicitHashKey: tc.ehk}); got != tc.want {
			t.Errorf("[100, 200] contains explicit hash key %q = %v; want %v", tc.ehk, got, tc.want)
		}
	}
	// Without an explicit hash key, the MD5 of the partition key decides.
	sum := md5.Sum([]byte("key"))
	h := new(big.Int).SetBytes(sum[:]).String()
	exact := shardHashRange(&types.HashKeyRange{StartingHashKey: aws.String(h), EndingHashKey: aws.String(h)})
	if !exact.contains(&kpl.Record{PartitionKey: "key"}) || exact.contains(&kpl.Record{PartitionKey: "other"}) {
		t.Errorf("the range [MD5(key), MD5(key)] does not hold exactly the partition key %q", "key")
	}
	// A range that is missing, malformed or holds every key checks nothing.
	for _, hr := range []*types.HashKeyRange{
		nil,
		{StartingHashKey: aws.String("x"), EndingHashKey: aws.String("5")},
		{StartingHashKey: aws.String("9"), EndingHashKey: aws.String("5")},
		{StartingHashKey: aws.String("0"), EndingHashKey: aws.String("340282366920938463463374607431768211455")},
	} {
		if n := shardHashRange(hr).outOfRange([]kpl.Record{{PartitionKey: "k", ExplicitHashKey: "7"}}); n != 0 {
			t.Errorf("range %+v: %d user records out of range; want none checked", hr, n)
		}
	}
}

// Checking the user records of an aggregate allocates nothing: it runs for
// every aggregate read from a stream of more than one shard.
func TestCheckingTheHashRangeDoesNotAllocate(t *testing.T) {
	r := shardHashRange(&types.HashKeyRange{StartingHashKey: aws.String("0"), EndingHashKey: aws.String("170141183460469231731687303715884105727")})
	users := []kpl.Record{
		{PartitionKey: "a-partition-key-of-some-length-0123456789-0123456789-0123456789"},
		{PartitionKey: "b", ExplicitHashKey: "12345678901234567890"},
	}
	if n := testing.AllocsPerRun(100, func() { r.outOfRange(users) }); n != 0 {
		t.Errorf("outOfRange allocates %v times per call; want 0", n)
	}
}

// BenchmarkHashRangeCheck measures the hash range check of user records
// with 11-byte partition keys, per user record: what reading aggregates
// from a stream of several shards adds to de-aggregating them.
func BenchmarkHashRangeCheck(b *testing.B) {
	r := shardHashRange(&types.HashKeyRange{StartingHashKey: aws.String("0"), EndingHashKey: aws.String("340282366920938463463374607431768211454")})
	users := make([]kpl.Record, 400)
	for i := range users {
		users[i] = kpl.Record{PartitionKey: "user-" + string(rune('a'+i%26)) + "00000"}
	}
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		if n%len(users) == 0 {
			r.outOfRange(users)
		}
		n++
	}
}
