"""A Flash Loyalty client in Python: enrolls a member, awards a purchase, spends, reads the
history, and reads the errors' details as a program would (google.rpc.Status details).

    scripts/python-env.sh                       # target/py-venv with grpcio and grpcio-tools
    export FLASH_TOKEN="$(cat .flash/admin-token)"   # the token `make run` printed
    target/py-venv/bin/python examples/python/client.py localhost:50051 demo

Every call sends the bearer token in FLASH_TOKEN (`authorization: Bearer <token>`): the
client needs the scopes award, spend, read and referrals on the program.

The stubs are generated from proto/ by grpcio-tools when the client starts, into
target/python-stubs; nothing generated is committed. Exits 1 when an answer is not the one
expected.
"""

import os
import sys
import uuid

import grpc
from grpc_status import rpc_status
from google.rpc import error_details_pb2

from bearer import Bearer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def generate_stubs():
    """Compiles proto/ into target/python-stubs and puts it on the import path."""
    from grpc_tools import protoc
    import grpc_tools

    out = os.path.join(ROOT, "target", "python-stubs")
    os.makedirs(out, exist_ok=True)
    proto_dir = os.path.join(ROOT, "proto")
    files = [
        os.path.join(dirpath, name)
        for dirpath, _, names in os.walk(proto_dir)
        for name in names
        if name.endswith(".proto")
    ]
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = ["protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out}",
            f"--grpc_python_out={out}"] + sorted(files)
    if protoc.main(args) != 0:
        sys.exit("generating the stubs failed")
    sys.path.insert(0, out)


generate_stubs()
from flash.loyalty.v1 import ledger_pb2, ledger_pb2_grpc  # noqa: E402
from flash.loyalty.v1 import referrals_pb2, referrals_pb2_grpc  # noqa: E402


def details(error):
    """The ErrorInfo, BadRequest and RetryInfo carried by a refusal."""
    found = {}
    status = rpc_status.from_call(error)
    for detail in status.details if status else []:
        for name, kind in (("error_info", error_details_pb2.ErrorInfo),
                           ("bad_request", error_details_pb2.BadRequest),
                           ("retry_info", error_details_pb2.RetryInfo)):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[name] = message
    return found


def expect(condition, what):
    if not condition:
        sys.exit(f"unexpected: {what}")


def main(address, program, token):
    channel = grpc.intercept_channel(grpc.insecure_channel(address), Bearer(token))
    ledger = ledger_pb2_grpc.LedgerStub(channel)
    member = str(uuid.uuid4())
    ledger.EnrollMember(ledger_pb2.EnrollMemberRequest(program_id=program, member_id=member))
    print(f"enrolled {member}")

    order = f"py-{uuid.uuid4().hex[:12]}"
    award = ledger_pb2.AwardRequest(
        program_id=program, member_id=member, idempotency_key=f"award-{order}",
        source=ledger_pb2.PURCHASE_SOURCE_SHOPIFY, external_ref=order,
        amount_minor=4250, currency="USD")
    award.occurred_at.GetCurrentTime()
    awarded = ledger.Award(award)
    print(f"awarded {awarded.awarded_points} points (entry {awarded.entry_id})")
    replay = ledger.Award(award)
    expect(replay.replayed and replay.entry_id == awarded.entry_id, "the replay")
    print("replayed: the same entry, nothing written")

    spent = ledger.Spend(ledger_pb2.SpendRequest(
        program_id=program, member_id=member, idempotency_key=f"spend-{order}",
        points=awarded.awarded_points // 2, reference="python-example"))
    print(f"spent {-spent.points if spent.points < 0 else spent.points} points, balance {spent.balance_points}")

    history = ledger.ListEntries(ledger_pb2.ListEntriesRequest(program_id=program, member_id=member))
    kinds = [ledger_pb2.EntryKind.Name(entry.kind) for entry in history.entries]
    print(f"history: {len(history.entries)} entries: {', '.join(kinds)}")
    expect(len(history.entries) == 2, "two entries")

    # The same key with another amount: ALREADY_EXISTS naming the fields that differ.
    changed = ledger_pb2.AwardRequest()
    changed.CopyFrom(award)
    changed.amount_minor = 9999
    try:
        ledger.Award(changed)
        sys.exit("unexpected: a reused key was accepted")
    except grpc.RpcError as error:
        info = details(error).get("error_info")
        expect(error.code() == grpc.StatusCode.ALREADY_EXISTS, error.code())
        expect(info is not None and info.reason == "KEY_REUSED", "ErrorInfo KEY_REUSED")
        print(f"reused key: {error.code().name} {info.reason} "
              f"differing_fields={info.metadata['differing_fields']}")

    # A malformed field: INVALID_ARGUMENT with a BadRequest field violation.
    try:
        ledger.GetMember(ledger_pb2.GetMemberRequest(program_id=program, member_id="not-a-uuid"))
        sys.exit("unexpected: a malformed member id was accepted")
    except grpc.RpcError as error:
        bad = details(error).get("bad_request")
        expect(error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.code())
        expect(bad is not None and bad.field_violations, "a BadRequest")
        print(f"bad field: {error.code().name} field={bad.field_violations[0].field}")
    # Past the referrer's invites of the day: RESOURCE_EXHAUSTED, with when to retry.
    referrals = referrals_pb2_grpc.ReferralsStub(channel)
    try:
        for batch in range(10):
            contacts = [f"friend-{batch}-{i}-{order}@example.com" for i in range(20)]
            referrals.CreateInvites(referrals_pb2.CreateInvitesRequest(
                program_id=program, referrer_member_id=member,
                idempotency_key=f"invite-{order}-{batch}", contacts=contacts))
        sys.exit("unexpected: the invites of the day had no end")
    except grpc.RpcError as error:
        found = details(error)
        expect(error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.code())
        expect("retry_info" in found, "a RetryInfo")
        info, retry = found["error_info"], found["retry_info"].retry_delay
        print(f"quota: {error.code().name} {info.reason} quota={info.metadata['quota']} "
              f"retry_after={retry.seconds}s")
    print("python client: ok")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: FLASH_TOKEN=<token> client.py HOST:PORT PROGRAM_ID")
    if not os.environ.get("FLASH_TOKEN"):
        sys.exit("set FLASH_TOKEN to a client's bearer token (`make run` keeps one in "
                 ".flash/admin-token; `flash clients add` prints one)")
    main(sys.argv[1], sys.argv[2], os.environ["FLASH_TOKEN"])
