% rebase('admin/base.tpl', title='Payments', section='/admin/payments')
<h1>Payments</h1>
<form class="filters" method="get" action="/admin/payments" hx-get="/admin/payments" hx-target="#payments" hx-trigger="change" hx-push-url="true">
  <label>Status <select name="status">
    <option value="">any status</option>
    % for s, words in statuses:
    <option value="{{s}}" {{'selected' if status == s else ''}}>{{words}}</option>
    % end
  </select></label>
  <label>Paid with <select name="method">
    <option value="">any way</option>
    % for m, words in methods.items():
    <option value="{{m}}" {{'selected' if method == m else ''}}>{{words}}</option>
    % end
  </select></label>
  <noscript><button type="submit">Filter</button></noscript>
</form>
<div id="payments">
% include('admin/_payments.tpl')
</div>
