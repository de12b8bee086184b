#!/usr/bin/env bash
# Create the GPU workers' instance profile "npsemiseg-worker": S3 access to the sweep's bucket only
# (worker_policy.json: list the bucket; get/put/delete its objects), nothing else (no EC2, no IAM, no other bucket).
# Also lets the head's role (ray-autoscaler-v1, created by the first `ray up`) pass this role to the workers it
# launches.
#
#   cluster/aws/worker_role.sh YOUR-BUCKET
set -euo pipefail
bucket="${1:?usage: $0 BUCKET}"
here="$(cd "$(dirname "$0")" && pwd)"
trust='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}'
aws iam create-role --role-name npsemiseg-worker --assume-role-policy-document "$trust" >/dev/null
aws iam put-role-policy --role-name npsemiseg-worker --policy-name npsemiseg-sweep-bucket \
  --policy-document "$(sed "s#YOUR-BUCKET#$bucket#g" "$here/worker_policy.json")"
aws iam create-instance-profile --instance-profile-name npsemiseg-worker >/dev/null
aws iam add-role-to-instance-profile --instance-profile-name npsemiseg-worker --role-name npsemiseg-worker
account=$(aws sts get-caller-identity --query Account --output text)
aws iam put-role-policy --role-name ray-autoscaler-v1 --policy-name npsemiseg-pass-worker-role \
  --policy-document "{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"iam:PassRole\",\"Resource\":\"arn:aws:iam::$account:role/npsemiseg-worker\"}]}"
echo "instance profile npsemiseg-worker: s3 on $bucket only"
