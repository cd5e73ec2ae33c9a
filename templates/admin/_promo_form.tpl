  % include('admin/_csrf.tpl')
  % if error:
  <p class="flash bad" role="alert">⚠️ {{error}}</p>
  % end
  <label>Code <input name="code" required minlength="3" maxlength="32" pattern="[A-Za-z0-9_\-]{3,32}" autocapitalize="characters" autocomplete="off" spellcheck="false" value="{{values['code']}}" placeholder="SPRING10" aria-describedby="code-hint"></label>
  <p class="muted hint" id="code-hint">3 to 32 letters, digits, - or _. Shoppers may type it in any case.</p>
  <fieldset class="choices">
    <legend>What it takes off</legend>
    <label class="check"><input type="radio" name="kind" value="percent" {{'checked' if values['kind'] == 'percent' else ''}}> A percentage of the price</label>
    <label class="check"><input type="radio" name="kind" value="fixed" {{'checked' if values['kind'] == 'fixed' else ''}}> An amount in EUR</label>
  </fieldset>
  <label>How much: percent (1 to 99) or EUR <input name="value" required inputmode="decimal" value="{{values['value']}}" placeholder="10 or 5.00"></label>
  <p class="muted hint">Of the products it is for, rounded down to the cent; the shopper always pays at least €0.01.</p>
  <label>Minimum basket in EUR (optional) <input name="min_total" inputmode="decimal" value="{{values['min_total']}}" placeholder="none"></label>
  <div class="pair">
    <label>Starts (UTC, optional) <input type="datetime-local" name="starts" value="{{values['starts']}}"></label>
    <label>Ends (UTC, optional) <input type="datetime-local" name="ends" value="{{values['ends']}}"></label>
  </div>
  <p class="muted hint">Times are UTC. Empty: from now, and no end. An end at 00:00 is the end of the day before.</p>
  <div class="pair">
    <label>Uses in all (optional) <input name="max_uses" inputmode="numeric" value="{{values['max_uses']}}" placeholder="no limit"></label>
    <label>Uses per shopper (optional) <input name="max_uses_per_user" inputmode="numeric" value="{{values['max_uses_per_user']}}" placeholder="no limit"></label>
  </div>
  <p class="muted hint">A paid order is a use; an open invoice holds one until it is paid or lapses.</p>
  % for key, legend in (("products", "Only for these products"), ("cities", "Only in these cities")):
  % if choices[key]:
  <fieldset class="choices scope">
    <legend>{{legend}} <span class="muted">(none ticked: all)</span></legend>
    % for cid, name in choices[key]:
    <label class="check"><input type="checkbox" name="{{key}}" value="{{cid}}" {{'checked' if str(cid) in values[key] else ''}}> {{name}}</label>
    % end
  </fieldset>
  % end
  % end
  <label>Note for yourself (optional) <input name="note" maxlength="200" value="{{values['note']}}" placeholder="Spring newsletter"></label>
