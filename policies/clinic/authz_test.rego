# Unit tests for the clinic policy: `wardctl policy test policies/clinic`.
package wardmesh.authz_test

import data.wardmesh.authz

clinician := {
	"sub": "dr-ada",
	"roles": ["clinician"],
	"amr": ["pwd", "otp"],
	"mfa": true,
	"iss": "https://idp.clinic.example",
}

clinician_no_mfa := object.union(clinician, {"amr": ["pwd"], "mfa": false})

biller := {
	"sub": "bill-bo",
	"roles": ["billing"],
	"amr": ["pwd"],
	"mfa": false,
	"iss": "https://idp.clinic.example",
}

request(user, method, path, purpose) := {
	"source": {
		"spiffe_id": "spiffe://wardmesh.local/ns/clinic/sa/frontend",
		"namespace": "clinic",
		"service_account": "frontend",
	},
	"destination": {"spiffe_id": "spiffe://wardmesh.local/ns/clinic/sa/records", "port": 8080},
	"request": {
		"method": method,
		"path": path,
		"route": null,
		"headers": {"x-purpose-of-use": purpose},
		"protocol": "http1",
	},
	"user": user,
	"context": {
		"purpose_of_use": purpose,
		"break_glass": null,
		"consent": null,
		"time": "2025-01-01T00:00:00Z",
		"risk": {"flagged": false},
	},
}

with_context(req, extra) := object.union(req, {"context": object.union(req.context, extra)})

decide(req) := d if {
	d := authz.decision with input as req
}

test_clinician_with_mfa_reads_notes_for_treatment if {
	d := decide(request(clinician, "GET", "/patients/p-1001/notes", "TREAT"))
	d.allow == true
	d.rule == "clinician-notes-treat"
	d.obligations == []
}

test_clinician_without_mfa_must_step_up if {
	d := decide(request(clinician_no_mfa, "GET", "/patients/p-1001/notes", "TREAT"))
	d.allow == false
	d.rule == "step-up-mfa"
	d.reason == "mfa_required"
}

test_clinician_cannot_write_notes if {
	d := decide(request(clinician, "POST", "/patients/p-1001/notes", "TREAT"))
	d.allow == false
	d.rule == "default-deny"
}

test_clinician_needs_treatment_purpose if {
	d := decide(request(clinician, "GET", "/patients/p-1001/notes", "HOPERAT"))
	d.rule == "default-deny"
}

test_billing_reads_billing_for_payment if {
	d := decide(request(biller, "GET", "/patients/p-1001/billing", "HPAYMT"))
	d.allow == true
	d.rule == "billing-read"
}

test_billing_cannot_read_notes if {
	d := decide(request(biller, "GET", "/patients/p-1001/notes", "HPAYMT"))
	d.allow == false
	d.rule == "default-deny"
}

test_clinician_cannot_read_billing if {
	d := decide(request(clinician, "GET", "/patients/p-1001/billing", "TREAT"))
	d.rule == "default-deny"
}

test_part2_record_with_consent_is_readable if {
	d := decide(request(clinician, "GET", "/patients/p-2001/notes", "TREAT"))
	d.allow == true
	d.rule == "clinician-notes-treat"
}

test_part2_record_without_consent_is_denied if {
	d := decide(request(clinician, "GET", "/patients/p-2002/notes", "TREAT"))
	d.allow == false
	d.rule == "part2-consent-required"
}

test_part2_consent_can_come_with_the_request if {
	req := with_context(
		request(clinician, "GET", "/patients/p-9001/notes", "TREAT"),
		{"consent": {"part2": true, "purposes": {"TREAT": true}}},
	)
	decide(req).rule == "clinician-notes-treat"
}

test_refused_consent_denies if {
	d := decide(request(clinician, "GET", "/patients/p-3001/notes", "TREAT"))
	d.allow == false
	d.rule == "consent-refused"
}

test_break_glass_allows_emergency_read_with_audit_and_review if {
	req := with_context(
		request(clinician_no_mfa, "GET", "/patients/p-2002/notes", "ETREAT"),
		{"break_glass": {"grant_id": "bg-1", "reason": "unconscious patient in ED"}},
	)
	d := decide(req)
	d.allow == true
	d.rule == "break-glass"
	"audit" in d.obligations
	"review" in d.obligations
}

test_etreat_without_a_grant_is_denied if {
	d := decide(request(clinician, "GET", "/patients/p-1001/notes", "ETREAT"))
	d.allow == false
	d.rule == "default-deny"
}

test_risk_flagged_user_without_mfa_must_step_up if {
	req := with_context(
		request(biller, "GET", "/patients/p-1001/billing", "HPAYMT"),
		{"risk": {"flagged": true, "reasons": ["impossible-travel"]}},
	)
	d := decide(req)
	d.allow == false
	d.reason == "mfa_required"
}

test_risk_flag_blocks_break_glass_without_mfa if {
	req := with_context(
		request(clinician_no_mfa, "GET", "/patients/p-1001/notes", "ETREAT"),
		{"break_glass": {"grant_id": "bg-2"}, "risk": {"flagged": true}},
	)
	decide(req).reason == "mfa_required"
}

test_no_user_is_denied if {
	d := decide(request(null, "GET", "/patients/p-1001/notes", "TREAT"))
	d.allow == false
	d.rule == "default-deny"
}

test_opaque_tcp_is_denied if {
	req := object.union(request(null, "GET", "/", "TREAT"), {"request": null})
	decide(req).rule == "default-deny"
}

test_other_paths_are_denied if {
	every path in ["/patients/p-1001", "/patients//notes", "/patients/p-1001/notes/extra", "/admin"] {
		decide(request(clinician, "GET", path, "TREAT")).rule == "default-deny"
	}
}
