"""A platform's first day driven through the Python client generated from the committed OpenAPI
document (openapi-python-client): sign-up, a booking, usage, a billing run on the test clock, an
invoice read, a webhook endpoint. Run by `tests/tests/api/client.rs` against a real server:
`python3 flow.py <base url> <admin token> <receiver url>` with the generated package `client` on
PYTHONPATH. Every answer is the generated model of its schema, never a bare dict; any
surprise raises, and the exit status says so."""

import datetime
import sys

from client import AuthenticatedClient
from client.api.admin import set_clock
from client.api.bookings import create_bookings, create_resources
from client.api.invoices import list_invoices, read_invoices
from client.api.quota import one
from client.api.tenants import create_tenants
from client.api.usage import record
from client.api.webhooks import create_webhook_endpoints, list_webhook_endpoints
from client.models import (
    ClockBody,
    CreateBooking,
    CreateEndpoint,
    CreateResource,
    CreateTenant,
    CustomerBody,
    Endpoint,
    Invoice,
    InvoicePage,
    Quota,
    ResourceView,
    SignedUp,
    UsageAccepted,
    UsageBody,
)


def expect(kind, answer):
    if not isinstance(answer, kind):
        raise SystemExit(f"expected {kind.__name__}, got {answer!r}")
    return answer


def main(base, admin_token, receiver):
    admin = AuthenticatedClient(base_url=base, token=admin_token, raise_on_unexpected_status=True)
    now = datetime.datetime(2031, 3, 1, tzinfo=datetime.timezone.utc)
    expect(object, set_clock.sync(client=admin, body=ClockBody(now=now)))

    signed_up = expect(SignedUp, create_tenants.sync(client=admin, body=CreateTenant(
        code="client-clinic", name="Client Clinic", billing_email="billing@client.example", plan="starter", trial_days=0)))
    tenant = AuthenticatedClient(base_url=base, token=signed_up.api_key, raise_on_unexpected_status=True)

    endpoint = expect(Endpoint, create_webhook_endpoints.sync(client=tenant, body=CreateEndpoint(
        url=receiver, event_types=["booking.confirmed", "invoice.issued"], description="front desk")))
    assert endpoint.secret and endpoint.secret.startswith("whsec_"), endpoint
    listed = list_webhook_endpoints.sync(client=tenant)
    assert [e.id for e in listed.data] == [endpoint.id], listed

    room = expect(ResourceView, create_resources.sync(client=tenant, body=CreateResource(name="Room 1", kind="room", capacity=4)))
    starts = now + datetime.timedelta(days=2, hours=9)
    booking = create_bookings.sync(client=tenant, body=CreateBooking(
        resource_id=str(room.id), starts_at=starts, ends_at=starts + datetime.timedelta(hours=1),
        customer=CustomerBody(name="Ada Lovelace", email="ada@example.com")))
    assert booking.status == "confirmed", booking

    accepted = expect(UsageAccepted, record.sync(client=tenant, body=UsageBody(metric="api_calls", quantity=12001, idempotency_key="day-1")))
    assert accepted.accepted and not accepted.duplicate, accepted
    again = expect(UsageAccepted, record.sync(client=tenant, body=UsageBody(metric="api_calls", quantity=12001, idempotency_key="day-1")))
    assert again.duplicate, again
    quota = expect(Quota, one.sync("api_calls", client=tenant))
    assert (quota.limit, quota.used) == (10000, 12001), quota

    # A month later the billing run issues the next invoice, with the overage in arrears.
    expect(object, set_clock.sync(client=admin, body=ClockBody(now=now + datetime.timedelta(days=32))))
    page = expect(InvoicePage, list_invoices.sync(client=tenant))
    assert len(page.data) == 2, page
    latest = expect(Invoice, read_invoices.sync(page.data[0].id, client=tenant))
    kinds = [line.kind for line in latest.lines]
    assert "overage" in kinds, kinds
    overage = next(line for line in latest.lines if line.kind == "overage")
    print(f"ok: {signed_up.code}, invoice {latest.number} total {latest.total}, overage {overage.amount}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
