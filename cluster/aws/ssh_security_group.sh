#!/usr/bin/env bash
# Create the cluster's security group: SSH (22) from YOUR address range only, everything else only between the
# cluster's own nodes. Prints the group id to put into SecurityGroupIds of every node type in cluster/gpu.yaml.
#
#   cluster/aws/ssh_security_group.sh 203.0.113.7/32 [us-west-2]     # your public IP: curl -s https://checkip.amazonaws.com
#
# Ray would otherwise create its own group with SSH open to 0.0.0.0/0 (its default rule); with SecurityGroupIds
# set, Ray uses this group as it is. The rules are the ones in security_group_rules.json (tests check them).
set -euo pipefail
cidr="${1:-}"
region="${2:-us-west-2}"
name="npsemiseg-ray"
if [[ -z "$cidr" || ! "$cidr" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}/([0-9]|[12][0-9]|3[0-2])$ ]]; then
  echo "usage: $0 SSH_CIDR [REGION]  (e.g. 203.0.113.7/32: the address range allowed to SSH to the head)" >&2
  exit 2
fi
if [[ "${cidr#*/}" -lt 8 ]]; then
  echo "$0: refusing SSH from $cidr (prefix shorter than /8 opens SSH to a large part of the internet)" >&2
  exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
vpc=$(aws ec2 describe-vpcs --region "$region" --filters Name=is-default,Values=true \
  --query 'Vpcs[0].VpcId' --output text)
sg=$(aws ec2 create-security-group --region "$region" --group-name "$name" --vpc-id "$vpc" \
  --description "npsemiseg Ray cluster: SSH from $cidr, all traffic inside the group" --query GroupId --output text)
rules=$(sed -e "s#YOUR_SSH_CIDR#$cidr#g" -e "s#THIS_GROUP_ID#$sg#g" "$here/security_group_rules.json")
aws ec2 authorize-security-group-ingress --region "$region" --group-id "$sg" --ip-permissions "$rules" >/dev/null
echo "$sg"
