<table class="rows">
  <thead><tr><th>NOWPayments id</th><th>Created (UTC)</th><th>For</th><th class="num">Price</th><th>Amount</th><th>Status</th><th>Outcome</th></tr></thead>
  <tbody>
  % for p in payments:
  <tr><td class="key" data-label="NOWPayments id"><a href="/admin/payments/{{p['id']}}">{{p["provider_id"]}}</a>{{" (repeat deposit)" if p["parent_id"] else ""}}</td><td data-label="Created (UTC)">{{p["created_at"][:16].replace("T", " ")}}</td>
    <td data-label="For">{{("order #%d" % p["order_id"]) if p["order_id"] else "top-up"}}</td><td data-label="Price" class="num">{{fmt(p["price_cents"])}}</td>
    <td data-label="Amount" class="wide">{{p["actually_paid"] or "0"}} / {{p["pay_amount"]}} {{p["pay_currency"].upper()}}</td>
    <td data-label="Status" class="aside"><span class="status {{p['status']}}">{{p["status"]}}</span></td><td data-label="Outcome">{{p["outcome"] or ""}}</td></tr>
  % end
  % if not payments:
  <tr><td colspan="7" class="muted">No payments.</td></tr>
  % end
  </tbody>
</table>
