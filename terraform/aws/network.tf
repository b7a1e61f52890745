# One VPC: a private subnet per zone for every VM and the internal load balancer, and one
# public subnet that holds only the NAT gateway (package installs, AWS APIs).

resource "aws_vpc" "demo" {
  #checkov:skip=CKV2_AWS_11: VPC flow logs cost more than the rest of the demo's logging and nothing here needs them; enable them for anything longer-lived.
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = { Name = var.name }
}

# The default security group allows nothing; every VM has its own group.
resource "aws_default_security_group" "closed" {
  vpc_id = aws_vpc.demo.id

  tags = { Name = "${var.name}-default-closed" }
}

resource "aws_internet_gateway" "demo" {
  vpc_id = aws_vpc.demo.id

  tags = { Name = var.name }
}

resource "aws_subnet" "public" {
  vpc_id                  = aws_vpc.demo.id
  cidr_block              = cidrsubnet(var.vpc_cidr, 8, 0)
  availability_zone       = local.zones[0]
  map_public_ip_on_launch = false

  tags = { Name = "${var.name}-public-nat" }
}

resource "aws_subnet" "private" {
  count = var.zone_count

  vpc_id                  = aws_vpc.demo.id
  cidr_block              = cidrsubnet(var.vpc_cidr, 8, 10 + count.index)
  availability_zone       = local.zones[count.index]
  map_public_ip_on_launch = false

  tags = { Name = "${var.name}-private-${local.zones[count.index]}" }
}

resource "aws_eip" "nat" {
  domain = "vpc"

  tags = { Name = "${var.name}-nat" }

  depends_on = [aws_internet_gateway.demo]
}

# One NAT gateway for every zone: the demo's outbound traffic is package downloads and
# API calls, not worth a gateway per zone.
resource "aws_nat_gateway" "demo" {
  allocation_id = aws_eip.nat.id
  subnet_id     = aws_subnet.public.id

  tags = { Name = var.name }
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.demo.id

  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.demo.id
  }

  tags = { Name = "${var.name}-public" }
}

resource "aws_route_table_association" "public" {
  subnet_id      = aws_subnet.public.id
  route_table_id = aws_route_table.public.id
}

resource "aws_route_table" "private" {
  vpc_id = aws_vpc.demo.id

  route {
    cidr_block     = "0.0.0.0/0"
    nat_gateway_id = aws_nat_gateway.demo.id
  }

  tags = { Name = "${var.name}-private" }
}

resource "aws_route_table_association" "private" {
  count = var.zone_count

  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private.id
}
