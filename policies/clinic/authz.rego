# wardmesh clinic starter policy.
#
# Entrypoint: data.wardmesh.authz.decision -> {allow, rule, reason, obligations}.
# Input: the document in ../README.md (schema: ../input.schema.json).
# Data:  data.consent[patient] = {"part2": bool, "purposes": {PURPOSE: bool}}
#
# Rules are tried in order; the first that applies decides. Anything no rule
# allows is denied by `default-deny`.
#
# Written for evaluation speed (every request runs this; budget p99 <= 50 us):
# each rule reference is a call in the evaluator, so simple facts are inline input
# lookups, only the parsed path and the consent checks are rules, and each body
# tests first what most requests fail. Reordering the tests inside a body never
# changes its meaning; reordering the `else` chain would.
package wardmesh.authz

default decision := {
	"allow": false,
	"rule": "default-deny",
	"reason": "no rule allows this request",
	"obligations": [],
}

decision := {
	"allow": false,
	"rule": "step-up-mfa",
	"reason": "mfa_required",
	"obligations": [],
} if {
	needs_step_up
} else := {
	"allow": true,
	"rule": "break-glass",
	"reason": "emergency access under an active break-glass grant",
	"obligations": ["audit", "review"],
} if {
	break_glass
} else := {
	"allow": false,
	"rule": "consent-refused",
	"reason": "the patient refused consent for this purpose of use",
	"obligations": [],
} if {
	patient_id
	consent_refused
} else := {
	"allow": false,
	"rule": "part2-consent-required",
	"reason": "42 CFR Part 2 record: explicit patient consent for this purpose is required",
	"obligations": [],
} if {
	patient_id
	part2
	not consent_granted
} else := {
	"allow": true,
	"rule": "clinician-notes-treat",
	"reason": "clinician with MFA reading notes for treatment",
	"obligations": [],
} if {
	clinician_reads_notes
} else := {
	"allow": true,
	"rule": "billing-read",
	"reason": "billing staff reading billing records for payment",
	"obligations": [],
} if {
	billing_reads_billing
}

# --- who is asking ----------------------------------------------------------
#
# Read inline where needed (cheaper than a rule per fact):
#   clinician      "clinician" in input.user.roles
#   billing staff  "billing" in input.user.roles
#   MFA            input.user.mfa == true
#   purpose        input.context.purpose_of_use (HL7 PurposeOfUse)
#   a read         input.request.method in {"GET", "HEAD"}

# Step-up: a risk-flagged user, or a clinician about to read notes, without MFA.
needs_step_up if {
	input.context.risk.flagged == true
	input.user != null
	not input.user.mfa == true
}

needs_step_up if {
	not input.user.mfa == true
	input.context.purpose_of_use == "TREAT"
	"clinician" in input.user.roles
	record_kind == "notes"
	input.request.method in {"GET", "HEAD"}
}

# --- what is asked for ------------------------------------------------------

# "/patients/p-1001/notes" -> ["", "patients", "p-1001", "notes"]
segments := split(trim_right(input.request.path, "/"), "/")

patient_id := id if {
	["", "patients", id, _] := segments
	id != ""
}

record_kind := kind if {
	["", "patients", id, kind] := segments
	id != ""
}

# --- consent (data.json, or the request's consent record) -------------------

part2 if data.consent[patient_id].part2 == true

part2 if input.context.consent.part2 == true

consent_granted if data.consent[patient_id].purposes[input.context.purpose_of_use] == true

consent_granted if input.context.consent.purposes[input.context.purpose_of_use] == true

consent_refused if data.consent[patient_id].purposes[input.context.purpose_of_use] == false

consent_refused if input.context.consent.purposes[input.context.purpose_of_use] == false

# --- the allow rules ----------------------------------------------------------

# Break-glass: an active grant (the agent passes only grants valid now) lets a
# clinician read a patient's records for emergency treatment, Part 2 included
# (42 CFR 2.51); every use is audited and queued for review.
break_glass if {
	input.context.purpose_of_use == "ETREAT"
	input.context.break_glass != null
	"clinician" in input.user.roles
	patient_id
	input.request.method in {"GET", "HEAD"}
}

clinician_reads_notes if {
	input.user.mfa == true
	input.context.purpose_of_use == "TREAT"
	"clinician" in input.user.roles
	record_kind == "notes"
	input.request.method in {"GET", "HEAD"}
}

# Billing staff see billing records only (minimum necessary), for payment.
billing_reads_billing if {
	input.context.purpose_of_use == "HPAYMT"
	"billing" in input.user.roles
	record_kind == "billing"
	input.request.method in {"GET", "HEAD"}
}
